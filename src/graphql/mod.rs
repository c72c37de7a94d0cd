//! The GraphQL transport: the schema (async-graphql is the executor) over the domain services.
//! Resolvers decode arguments, call one domain method and shape its result; rules live in
//! `domain/`.

pub mod errors;
pub mod limits;
pub mod mutation;
pub mod operations;
pub mod query;
pub mod share;
pub mod subscription;
pub mod types;

use std::sync::Arc;

use async_graphql::extensions::apollo_persisted_queries::{
    ApolloPersistedQueries, LruCacheStorage,
};
use async_graphql::{Context, MergedObject, SDLExportOptions, Schema};

use crate::auth::Viewer;
use crate::domain::Domain;

pub use mutation::Mutation;
pub use query::Query;
pub use subscription::Subscription;

/// The mutation root: the core mutations, and the changes to messages already sent.
#[derive(MergedObject)]
#[graphql(name = "Mutation")]
pub struct Mutations(Mutation, mutation::MessageChanges);

/// The query root: the core queries, and the operator console's.
#[derive(MergedObject)]
#[graphql(name = "Query")]
pub struct Queries(Query, operations::OperationsQuery);

pub type TidingsSchema = Schema<Queries, Mutations, Subscription>;

/// Marks a request as coming over a WebSocket connection (typing set there stops when it
/// closes).
#[derive(Clone, Copy, Debug)]
pub struct SocketConnection(pub crate::domain::typing::ConnectionId);

/// Deepest selection a query may nest.
pub const MAX_DEPTH: usize = 16;
/// Largest complexity (roughly: fields a query may resolve) a query may have.
pub const MAX_COMPLEXITY: usize = 5000;
/// Most directives on one field.
pub const MAX_DIRECTIVES: usize = 5;
/// Persisted queries (Apollo APQ) remembered per instance; a client whose hash was forgotten
/// sends the query again, as the protocol provides.
pub const PERSISTED_QUERIES: usize = 1024;

pub fn build_schema(domain: Option<Arc<Domain>>, introspection: bool) -> TidingsSchema {
    let mut builder = Schema::build(
        Queries(Query, operations::OperationsQuery),
        Mutations(Mutation, mutation::MessageChanges),
        Subscription,
    )
    .limit_depth(MAX_DEPTH)
    .limit_complexity(MAX_COMPLEXITY)
    .limit_directives(MAX_DIRECTIVES)
    .extension(limits::AliasLimit)
    .extension(limits::QueriesOverGet)
    .extension(ApolloPersistedQueries::new(LruCacheStorage::new(
        PERSISTED_QUERIES,
    )));
    if let Some(domain) = domain {
        builder = builder.data(domain);
    }
    if !introspection {
        builder = builder.disable_introspection();
    }
    builder.finish()
}

/// The schema in SDL, exactly as introspection describes it (what `schema.graphql` holds).
pub fn sdl() -> String {
    build_schema(None, true).sdl_with_options(SDLExportOptions::new().include_specified_by())
}

pub(crate) fn domain<'a>(ctx: &Context<'a>) -> &'a Arc<Domain> {
    ctx.data_unchecked::<Arc<Domain>>()
}

pub(crate) fn viewer<'a>(ctx: &Context<'a>) -> &'a Viewer {
    static ANONYMOUS: Viewer = Viewer::Anonymous;
    ctx.data_opt::<Viewer>().unwrap_or(&ANONYMOUS)
}
