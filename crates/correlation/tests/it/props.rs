//! Property tests: format/parse round trips, parsers never panic, one JSON line per event.

use keel_correlation::{
    CorrelationId, Incoming, SpanId, TraceFlags, TraceId, TraceParent, TraceState,
};
use proptest::prelude::*;

use crate::{Capture, ready};

/// A displayable error whose text is arbitrary.
struct Text(String);

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn traceparent_format_parse_round_trip(trace in 1..=u128::MAX, span in 1..=u64::MAX, flags: u8) {
        let parent = TraceParent {
            trace_id: TraceId::from_u128(trace).unwrap(),
            parent_id: SpanId::from_u64(span).unwrap(),
            flags: TraceFlags::new(flags),
        };
        let text = parent.to_string();
        prop_assert_eq!(text.len(), 55);
        // Only the defined flags, `sampled` and `random`, are written: the other bits are
        // sent as zero.
        let sent = TraceParent { flags: TraceFlags::new(flags & 0x03), ..parent };
        prop_assert_eq!(text.parse::<TraceParent>(), Ok(sent));
    }

    #[test]
    fn tracestate_format_parse_round_trip(members in proptest::collection::btree_map("[a-z][a-z0-9_*/-]{0,20}", "[!-+--<>-~][ -+--<>-~]{0,20}[!-+--<>-~]", 0..=32)) {
        let text = members.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join(",");
        let state: TraceState = text.parse().unwrap();
        prop_assert_eq!(state.len(), members.len());
        prop_assert_eq!(state.to_string(), text);
    }

    #[test]
    fn parsers_never_panic_on_any_string(text in any::<String>()) {
        let _ = text.parse::<TraceParent>();
        let _ = text.parse::<TraceState>();
        let _ = text.parse::<CorrelationId>();
    }

    #[test]
    fn traceparent_parser_never_panics_near_valid_input(position in 0usize..60, byte in any::<u8>(), cut in 0usize..70) {
        let mut bytes = b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future".to_vec();
        if position < bytes.len() {
            bytes[position] = byte;
        }
        bytes.truncate(cut);
        let text = String::from_utf8_lossy(&bytes);
        let _ = text.parse::<TraceParent>();
    }

    #[test]
    fn incoming_never_panics_on_any_bytes(
        names in proptest::collection::vec(prop_oneof![
            Just("traceparent".to_owned()), Just("TraceState".to_owned()),
            Just("x-correlation-id".to_owned()), Just("X-Request-Id".to_owned()), any::<String>()
        ], 0..6),
        values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 6),
    ) {
        let headers: Vec<(String, Vec<u8>)> = names.into_iter().zip(values).collect();
        let incoming = Incoming::from_headers(headers.iter().map(|(name, value)| (name.as_str(), value.as_slice())));
        // Whatever arrived, the id we continue is safe to log.
        let id = incoming.correlation_id().to_string();
        prop_assert!(id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(&b)));
    }

    #[test]
    fn any_operation_and_error_text_gives_one_json_line_per_event(operation in any::<String>(), error in any::<String>()) {
        let capture = Capture::default();
        let result: Result<(), Text> = ready(capture.tracer().start_trace(operation.clone(), async { Err(Text(error.clone())) }));
        prop_assert!(result.is_err());
        let text = capture.text();
        prop_assert_eq!(text.matches('\n').count(), 2);
        let lines = capture.lines();
        prop_assert_eq!(lines.len(), 2);
        prop_assert_eq!(&lines[0]["operation"], &serde_json::Value::String(operation.clone()));
        prop_assert_eq!(&lines[1]["operation"], &serde_json::Value::String(operation));
        prop_assert_eq!(&lines[1]["error"], &serde_json::Value::String(error));
    }

    #[test]
    fn tracestate_parse_keeps_the_first_of_duplicated_keys(
        members in proptest::collection::vec(("[a-z0-9][a-z0-9_*/@-]{0,6}", "[!-+--<>-~]{1,8}"), 0..40),
    ) {
        let text = members.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join(",");
        // Reference model: first occurrence of each key, in order, then the 32-member limit.
        let mut model: Vec<(String, String)> = Vec::new();
        for (key, value) in &members {
            if !model.iter().any(|(existing, _)| existing == key) {
                model.push((key.clone(), value.clone()));
            }
        }
        let parsed = text.parse::<TraceState>();
        if model.len() > 32 {
            prop_assert!(parsed.is_err());
        } else {
            let state = parsed.unwrap();
            let got: Vec<(String, String)> = state.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            prop_assert_eq!(got, model);
        }
    }

    #[test]
    fn tracestate_insert_matches_a_model(
        start in proptest::collection::btree_map("[a-e][a-e0-9@]{0,2}", "[a-z]{1,4}", 0..=32),
        inserts in proptest::collection::vec(("[a-e][a-e0-9@]{0,2}", "[a-z]{1,4}"), 0..40),
    ) {
        let text = start.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join(",");
        let mut state: TraceState = text.parse().unwrap();
        let mut model: Vec<(String, String)> = start.into_iter().collect();
        for (key, value) in inserts {
            state.insert(&key, &value).unwrap();
            // The specification's mutation: the entry moves to the front, updated; the
            // right-most member goes when there would be more than 32.
            model.retain(|(existing, _)| *existing != key);
            model.insert(0, (key, value));
            model.truncate(32);
            let got: Vec<(String, String)> = state.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            prop_assert_eq!(&got, &model);
        }
    }

    #[test]
    fn tracestate_truncation_removes_long_entries_first_then_from_the_end(
        lengths in proptest::collection::vec(1usize..200, 0..=32),
        max_len in 0usize..1200,
    ) {
        let members: Vec<(String, String)> = lengths
            .iter()
            .enumerate()
            .map(|(index, length)| (format!("k{index}"), "v".repeat(*length)))
            .collect();
        let text = members.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join(",");
        let mut state: TraceState = text.parse().unwrap();
        let before = state.header_len();
        prop_assert_eq!(before, text.len());
        state.truncate(max_len);
        let kept: Vec<(String, String)> = state.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        prop_assert!(state.header_len() <= max_len || kept.is_empty());
        prop_assert_eq!(state.to_string().len(), state.header_len());
        if before <= max_len {
            prop_assert_eq!(&kept, &members, "nothing removed when it fits");
        }
        // Whole entries, in their order: a subsequence of what came in.
        let mut rest = members.iter();
        for entry in &kept {
            prop_assert!(rest.any(|member| member == entry), "{:?} out of order or changed", entry);
        }
        let is_long = |(key, value): &(String, String)| key.len() + 1 + value.len() > 128;
        let removed: Vec<&(String, String)> = members.iter().filter(|member| !kept.contains(member)).collect();
        // A short entry goes only once every long one is gone, and short entries go from
        // the end: the kept short entries are the first ones.
        if removed.iter().any(|member| !is_long(member)) {
            prop_assert!(!kept.iter().any(is_long));
            let short: Vec<&(String, String)> = members.iter().filter(|member| !is_long(member)).collect();
            let kept_short: Vec<&(String, String)> = kept.iter().collect();
            prop_assert_eq!(&short[..kept_short.len()], &kept_short[..]);
        }
    }
}
