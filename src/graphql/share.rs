//! Subscriptions that share one execution, from the GraphQL side: which feed a request asks for
//! (the domain says whether its output is shared), and how a shared execution's response stream
//! marks the point where one member's stream ends.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
};
use async_graphql::{ErrorExtensions, Name, Request, Response, Value as GqlValue};

use crate::auth::Grant;
use crate::domain::feeds::FeedRequest;
use crate::domain::DomainError;

/// The extension of the error that marks a departure in a shared execution's stream: the
/// departing user's id. Never sent to a client.
const DEPARTED: &str = "departed";

/// A subscription request that may share an execution: its root field (as error paths name
/// it) and the grant the domain gave its feed.
pub struct Shared {
    pub field: &'static str,
    pub grant: Grant,
}

/// Whether `request` is a subscription to a feed whose output the domain shares: a single
/// root field without directives, arguments known (from variables or literals).
pub fn shared(request: &Request) -> Option<Shared> {
    let doc = parsed(&request.query)?;
    let operation = match (&doc.operations, &request.operation_name) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name.as_str())?,
        (DocumentOperations::Multiple(_), None) => return None,
    };
    if operation.node.ty != OperationType::Subscription || !operation.node.directives.is_empty() {
        return None;
    }
    let [item] = operation.node.selection_set.node.items.as_slice() else {
        return None;
    };
    let Selection::Field(field) = &item.node else {
        return None;
    };
    let field = &field.node;
    if !field.directives.is_empty() {
        return None;
    }
    let variables = &request.variables;
    let argument = |name: &str| -> Option<GqlValue> {
        let value = field.get_argument(name)?.node.clone();
        value
            .into_const_with(|var: Name| variables.get(&var).cloned().ok_or(()))
            .ok()
    };
    let string = |value: Option<GqlValue>| -> Option<Option<String>> {
        match value {
            None | Some(GqlValue::Null) => Some(None),
            Some(GqlValue::String(s)) => Some(Some(s)),
            Some(_) => None,
        }
    };
    match field.name.node.as_str() {
        "messageAdded" => {
            let room_id = string(argument("roomId"))??;
            let after = string(argument("after"))?;
            let grant = FeedRequest::Messages {
                room_id: &room_id,
                after: after.as_deref(),
            }
            .shared_grant()?;
            Some(Shared {
                field: "messageAdded",
                grant,
            })
        }
        "roomEvents" => {
            let room_id = string(argument("roomId"))??;
            let after = string(argument("after"))?;
            // Conservative: a fragment that names the field, used or not, counts.
            let viewer_reacted = selects(&operation.node.selection_set.node, VIEWER_REACTED)
                || doc
                    .fragments
                    .values()
                    .any(|f| selects(&f.node.selection_set.node, VIEWER_REACTED));
            let grant = FeedRequest::RoomEvents {
                room_id: &room_id,
                after: after.as_deref(),
                viewer_reacted,
            }
            .shared_grant()?;
            Some(Shared {
                field: "roomEvents",
                grant,
            })
        }
        "events" => {
            let channels = match argument("channels") {
                None | Some(GqlValue::Null) => None,
                Some(GqlValue::List(items)) => Some(
                    items
                        .into_iter()
                        .map(|v| match v {
                            GqlValue::String(s) => Some(s),
                            _ => None,
                        })
                        .collect::<Option<Vec<_>>>()?,
                ),
                Some(_) => return None,
            };
            let grant = FeedRequest::Events {
                channels: channels.as_deref(),
            }
            .shared_grant()?;
            Some(Shared {
                field: "events",
                grant,
            })
        }
        _ => None,
    }
}

/// Documents kept parsed at most, and the longest text kept (bytes).
const PARSED_DOCUMENTS: usize = 64;
const PARSED_DOCUMENT_BYTES: usize = 4096;

/// `query` parsed, from the documents parsed before when it is one of them (`Parsed`).
fn parsed(query: &str) -> Option<Arc<ExecutableDocument>> {
    static PARSED: LazyLock<Parsed> = LazyLock::new(Parsed::default);
    PARSED.get(query)
}

/// Subscription documents kept parsed, by their text. An application's clients subscribe with
/// a few documents, each thousands of times in a connect storm, and parsing one was about a
/// twentieth of a connect's CPU. Bounded: at most `PARSED_DOCUMENTS` documents of at most
/// `PARSED_DOCUMENT_BYTES` each (longer ones are parsed every time), and the lot is dropped
/// when a new one finds it full, so a client sending ever new documents churns it without
/// growing it. A document that does not parse is not kept: its request is not shared, and
/// async-graphql answers it with its own parse error. Nor is one without a subscription.
#[derive(Default)]
struct Parsed(Mutex<HashMap<Box<str>, Arc<ExecutableDocument>>>);

impl Parsed {
    fn get(&self, query: &str) -> Option<Arc<ExecutableDocument>> {
        let lock = || self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let keep = query.len() <= PARSED_DOCUMENT_BYTES;
        if keep {
            if let Some(doc) = lock().get(query) {
                return Some(doc.clone());
            }
        }
        let doc = Arc::new(async_graphql::parser::parse_query(query).ok()?);
        // Queries and mutations sent over a socket are parsed here too; only subscriptions,
        // which a client repeats, are worth a place.
        let subscribes = doc
            .operations
            .iter()
            .any(|(_, op)| op.node.ty == OperationType::Subscription);
        if keep && subscribes {
            let mut parsed = lock();
            if parsed.len() >= PARSED_DOCUMENTS {
                parsed.clear();
            }
            parsed.insert(query.into(), doc.clone());
        }
        Some(doc)
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// The field of a reaction that differs per viewer.
pub const VIEWER_REACTED: &str = "viewerReacted";

/// Whether a selection set selects a field of this name at any depth (inline fragments
/// included; named fragments are the caller's to look into).
fn selects(set: &SelectionSet, name: &str) -> bool {
    set.items.iter().any(|item| match &item.node {
        Selection::Field(field) => {
            field.node.name.node == name || selects(&field.node.selection_set.node, name)
        }
        Selection::InlineFragment(fragment) => selects(&fragment.node.selection_set.node, name),
        Selection::FragmentSpread(_) => false,
    })
}

/// The error a shared execution yields where `user_id` left: FORBIDDEN for that user's
/// members, marked so the transport knows whose stream it ends.
pub(crate) fn departure_error(user_id: &str, error: &DomainError) -> async_graphql::Error {
    let user_id = user_id.to_owned();
    let code = error.code();
    async_graphql::Error::new(error.to_string()).extend_with(move |_, e| {
        e.set("code", code);
        e.set(DEPARTED, user_id.as_str());
    })
}

/// Whose departure `response` marks, with the marker taken out (the response is then what
/// that user's members receive).
pub fn take_departure(response: &mut Response) -> Option<String> {
    let mut departed = None;
    for error in &mut response.errors {
        if let Some(ext) = error.extensions.as_mut() {
            if let Some(GqlValue::String(user)) = ext.get(DEPARTED).cloned() {
                ext.unset(DEPARTED);
                departed = Some(user);
            }
        }
    }
    departed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(channels: &[&str]) -> Request {
        let query = "subscription($c: [String!]) { events(channels: $c) { channel payload } }";
        Request::new(query).variables(async_graphql::Variables::from_json(
            serde_json::json!({ "c": channels }),
        ))
    }

    #[test]
    fn a_document_is_parsed_once() {
        let parsed = Parsed::default();
        let first = parsed
            .get("subscription { events { channel } }")
            .expect("parses");
        let again = parsed
            .get("subscription { events { channel } }")
            .expect("parses");
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second request reuses the parse"
        );
        assert_eq!(parsed.kept(), 1);
    }

    #[test]
    fn requests_with_one_document_read_their_own_variables() {
        let a = shared(&events(&["a"])).expect("shared");
        let b = shared(&events(&["b"])).expect("shared");
        assert_eq!(a.field, "events");
        assert_eq!(a.grant, Grant::Channels(vec!["a".to_owned()]));
        assert_eq!(b.grant, Grant::Channels(vec!["b".to_owned()]));
    }

    #[test]
    fn the_parsed_documents_stay_within_their_budget() {
        let parsed = Parsed::default();
        for n in 0..PARSED_DOCUMENTS * 3 {
            let query = format!("subscription Budget{n} {{ events {{ channel }} }}");
            assert!(parsed.get(&query).is_some());
            assert!(parsed.kept() <= PARSED_DOCUMENTS, "{} kept", parsed.kept());
        }
        assert_eq!(
            parsed.kept(),
            PARSED_DOCUMENTS,
            "full, then started over, then full"
        );
        let long = format!(
            "subscription {{ events {{ channel }} }} # {}",
            "x".repeat(PARSED_DOCUMENT_BYTES)
        );
        let first = parsed.get(&long).expect("parses");
        let again = parsed.get(&long).expect("parses");
        assert!(!Arc::ptr_eq(&first, &again), "a long document is not kept");
        let before = parsed.kept();
        assert!(parsed.get("subscription { events { ").is_none());
        assert_eq!(parsed.kept(), before, "what does not parse is not kept");
        assert!(parsed
            .get("mutation { joinRoom(roomId: \"r\") { id } }")
            .is_some());
        assert!(parsed.get("query { me { id } }").is_some());
        assert_eq!(parsed.kept(), before, "queries and mutations are not kept");
    }
}
