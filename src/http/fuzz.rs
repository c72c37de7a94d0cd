//! Property tests: the decoders of both WebSocket protocols and of the legacy frames never
//! panic, whatever a client sends (random JSON of any shape, random text).

use proptest::prelude::*;
use serde_json::{Map, Value};

/// Any JSON value, nested a few levels, with the field names the decoders look at mixed in.
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("type".to_owned()),
        Just("id".to_owned()),
        Just("payload".to_owned()),
        Just("query".to_owned()),
        Just("variables".to_owned()),
        Just("extensions".to_owned()),
        Just("room".to_owned()),
        Just("text".to_owned()),
        Just("channel".to_owned()),
        Just("user_ids".to_owned()),
        Just("authToken".to_owned()),
        Just("headers".to_owned()),
        ".{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just("subscribe".to_owned()),
            Just("join_room".to_owned()),
            Just("connection_init".to_owned()),
            Just("Bearer x".to_owned()),
            ".{0,16}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn legacy_frames_decode_or_are_refused_without_panicking(frame in json()) {
        let _ = super::legacy::inbound::decode(&frame);
    }

    #[test]
    fn graphql_ws_payloads_decode_or_are_refused_without_panicking(payload in json()) {
        let _ = super::ws::token_from_init(&payload);
        let _ = serde_json::from_value::<async_graphql::Request>(payload);
    }

    #[test]
    fn any_text_is_parsed_or_refused_without_panicking(text in ".{0,200}") {
        if let Ok(frame) = serde_json::from_str::<Value>(&text) {
            let _ = super::legacy::inbound::decode(&frame);
            let _ = super::ws::token_from_init(&frame);
        }
    }
}
