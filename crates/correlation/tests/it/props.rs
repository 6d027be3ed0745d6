//! Property tests: format/parse round trips, parsers never panic, one JSON line per event.

use correlation::{CorrelationId, Incoming, SpanId, TraceFlags, TraceId, TraceParent, TraceState};
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
        // Only the defined flag, `sampled`, is written: the other bits are sent as zero.
        let sent = TraceParent { flags: TraceFlags::new(flags & 0x01), ..parent };
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
}
