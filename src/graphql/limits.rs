//! Query cost limits beyond async-graphql's depth and complexity: a cap on aliases, which
//! otherwise let one small query ask for the same expensive field hundreds of times.

use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, Selection, SelectionSet,
};
use async_graphql::{ServerError, ServerResult, Variables};

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
