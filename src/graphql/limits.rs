//! Query cost limits beyond async-graphql's depth and complexity: a cap on aliases, which
//! otherwise let one small query ask for the same expensive field hundreds of times, and the
//! cost of a list field, which counts what it selects once per item of its page.

use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
};
use async_graphql::{ServerError, ServerResult, Variables};

/// The complexity of a list field whose page size is `size` (`None`: `default`): what it
/// selects, once per item it may return. A size out of range is refused when the field
/// resolves; here it counts as the nearest bound, so the sum cannot overflow.
pub fn page_cost(size: Option<i32>, default: i32, max: i32, child_complexity: usize) -> usize {
    let items = size.unwrap_or(default).clamp(1, max.max(1));
    usize::try_from(items)
        .unwrap_or(1)
        .saturating_mul(child_complexity)
}

/// Most aliases one request may use.
pub const MAX_ALIASES: usize = 30;

pub struct AliasLimit;

impl ExtensionFactory for AliasLimit {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(AliasLimitExtension)
    }
}

struct AliasLimitExtension;

fn aliases(set: &SelectionSet) -> usize {
    set.items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(f) => {
                usize::from(f.node.alias.is_some()) + aliases(&f.node.selection_set.node)
            }
            Selection::InlineFragment(i) => aliases(&i.node.selection_set.node),
            Selection::FragmentSpread(_) => 0,
        })
        .sum()
}

fn count(doc: &ExecutableDocument) -> usize {
    let operations: usize = match &doc.operations {
        DocumentOperations::Single(op) => aliases(&op.node.selection_set.node),
        DocumentOperations::Multiple(ops) => ops
            .values()
            .map(|op| aliases(&op.node.selection_set.node))
            .sum(),
    };
    let fragments: usize = doc
        .fragments
        .values()
        .map(|f| aliases(&f.node.selection_set.node))
        .sum();
    operations + fragments
}

#[async_trait::async_trait]
impl Extension for AliasLimitExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        let n = count(&doc);
        if n > MAX_ALIASES {
            return Err(ServerError::new(
                format!("too many aliases: {n}, at most {MAX_ALIASES}"),
                None,
            ));
        }
        Ok(doc)
    }
}

/// Marks a request that came over `GET`: it may only query (GraphQL over HTTP). Its query is
/// checked once parsed, so a persisted query's hash cannot stand for a mutation either.
#[derive(Clone, Copy, Debug)]
pub struct OverGet;

/// The message of a mutation refused over `GET`; the HTTP side answers it with 405.
pub const MUTATION_OVER_GET: &str = "mutations are not allowed over GET: use POST";

pub struct QueriesOverGet;

impl ExtensionFactory for QueriesOverGet {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(QueriesOverGetExtension)
    }
}

struct QueriesOverGetExtension;

#[async_trait::async_trait]
impl Extension for QueriesOverGetExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        if ctx.data_opt::<OverGet>().is_some() {
            let mutation = match &doc.operations {
                DocumentOperations::Single(op) => op.node.ty == OperationType::Mutation,
                // Which one runs is chosen later by name: refuse if any is a mutation.
                DocumentOperations::Multiple(ops) => {
                    ops.values().any(|op| op.node.ty == OperationType::Mutation)
                }
            };
            if mutation {
                return Err(ServerError::new(MUTATION_OVER_GET, None));
            }
        }
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::page_cost;

    #[test]
    fn a_list_costs_its_selection_once_per_item_of_its_page() {
        assert_eq!(page_cost(None, 50, 100, 3), 150);
        assert_eq!(page_cost(Some(10), 50, 100, 3), 30);
        assert_eq!(page_cost(Some(100_000), 50, 100, 3), 300);
        assert_eq!(page_cost(Some(-5), 50, 100, 3), 3);
        assert_eq!(page_cost(Some(0), 50, 100, 3), 3);
        assert_eq!(
            page_cost(Some(i32::MAX), 50, i32::MAX, usize::MAX),
            usize::MAX
        );
    }
}
