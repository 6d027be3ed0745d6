//! W3C Trace Context rules, one table row per rule (values from the specification's text).

use correlation::{
    Incoming, RejectionReason, TraceFlags, TraceParent, TraceParentError, TraceState,
    TraceStateError,
};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn parent(value: &str) -> Result<TraceParent, TraceParentError> {
    value.parse()
}

#[test]
#[allow(clippy::too_many_lines)] // A table: one row per rule of the specification.
fn traceparent_table() {
    use TraceParentError::{
        BadField, BadVersion, ForbiddenVersion, MissingDash, TooShort, TrailingData, ZeroParentId,
        ZeroTraceId,
    };
    let valid = format!("00-{TRACE}-{PARENT}-01");
    // `Ok(flags)`: accepted, `flags` is the byte as received; what is sent again keeps only
    // the bits the specification defines (`sampled`): "Vendors MUST set those to zero".
    let rows: Vec<(&str, String, Result<u8, TraceParentError>)> = vec![
        ("spec example, sampled", valid.clone(), Ok(0x01)),
        (
            "spec example, not sampled",
            format!("00-{TRACE}-{PARENT}-00"),
            Ok(0x00),
        ),
        (
            "unknown flags are accepted and read, zeroed when sent",
            format!("00-{TRACE}-{PARENT}-09"),
            Ok(0x09),
        ),
        (
            "all flag bits set: only sampled is sent",
            format!("00-{TRACE}-{PARENT}-ff"),
            Ok(0xff),
        ),
        (
            "Level 2's random-trace-id flag is not a Level 1 flag",
            format!("00-{TRACE}-{PARENT}-02"),
            Ok(0x02),
        ),
        (
            "OWS around the value",
            format!(" \t00-{TRACE}-{PARENT}-01 "),
            Ok(0x01),
        ),
        (
            "uppercase hex in trace-id",
            format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
            Err(BadField {
                field: "trace-id",
                position: 3,
            }),
        ),
        (
            "uppercase hex in parent-id",
            format!("00-{TRACE}-00F067AA0BA902B7-01"),
            Err(BadField {
                field: "parent-id",
                position: 36,
            }),
        ),
        (
            "uppercase hex in flags",
            format!("00-{TRACE}-{PARENT}-0A"),
            Err(BadField {
                field: "trace-flags",
                position: 53,
            }),
        ),
        (
            "uppercase hex in version",
            format!("0A-{TRACE}-{PARENT}-01"),
            Err(BadVersion),
        ),
        (
            "non-hex character",
            format!("00-{}g-{PARENT}-01", &TRACE[..31]),
            Err(BadField {
                field: "trace-id",
                position: 3,
            }),
        ),
        (
            "trace-id one digit short",
            format!("00-{}-{PARENT}-01", &TRACE[..31]),
            Err(TooShort { len: 54 }),
        ),
        (
            "trace-id one digit long",
            format!("00-{TRACE}0-{PARENT}-01"),
            Err(TrailingData { len: 56 }),
        ),
        (
            "parent-id one digit long, higher version",
            format!("01-{TRACE}-{PARENT}0-01"),
            Err(MissingDash { position: 52 }),
        ),
        (
            "flags one digit short",
            format!("00-{TRACE}-{PARENT}-1"),
            Err(TooShort { len: 54 }),
        ),
        (
            "version one digit",
            format!("0-{TRACE}-{PARENT}-01"),
            Err(BadVersion),
        ),
        (
            "version not followed by a dash",
            format!("000{TRACE}-{PARENT}-01"),
            Err(BadVersion),
        ),
        (
            "field delimiter not a dash",
            format!("00-{TRACE}_{PARENT}-01"),
            Err(MissingDash { position: 35 }),
        ),
        (
            "version ff is forbidden",
            format!("ff-{TRACE}-{PARENT}-01"),
            Err(ForbiddenVersion),
        ),
        (
            "all-zero trace-id",
            format!("00-{}-{PARENT}-01", "0".repeat(32)),
            Err(ZeroTraceId),
        ),
        (
            "all-zero parent-id",
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            Err(ZeroParentId),
        ),
        (
            "version 00 with trailing data",
            format!("00-{TRACE}-{PARENT}-01-extra"),
            Err(TrailingData { len: 61 }),
        ),
        (
            "higher version, exact length",
            format!("01-{TRACE}-{PARENT}-01"),
            Ok(0x01),
        ),
        (
            "higher version, trailing fields ignored",
            format!("cc-{TRACE}-{PARENT}-01-what-the-future-holds"),
            Ok(0x01),
        ),
        (
            "higher version, flags not followed by a dash",
            format!("cc-{TRACE}-{PARENT}-01x"),
            Err(MissingDash { position: 55 }),
        ),
        (
            "higher version, shorter than 55",
            format!("cc-{TRACE}-{PARENT}-0"),
            Err(TooShort { len: 54 }),
        ),
        ("empty", String::new(), Err(BadVersion)),
    ];
    for (rule, value, expected) in rows {
        let parsed = parent(&value);
        match expected {
            Ok(flags) => {
                let parsed =
                    parsed.unwrap_or_else(|error| panic!("{rule}: rejected {value:?}: {error}"));
                assert_eq!(parsed.trace_id.to_string(), TRACE, "{rule}");
                assert_eq!(parsed.parent_id.to_string(), PARENT, "{rule}");
                assert_eq!(parsed.flags, TraceFlags::new(flags), "{rule}");
                assert_eq!(
                    parsed.to_string(),
                    format!("00-{TRACE}-{PARENT}-{:02x}", flags & 0x01),
                    "{rule}: re-sent as version 00 with only the defined flags"
                );
            }
            Err(error) => assert_eq!(parsed, Err(error), "{rule}: {value:?}"),
        }
    }
}

#[test]
fn sampled_flag_is_masked() {
    assert!(
        parent(&format!("00-{TRACE}-{PARENT}-09"))
            .unwrap()
            .flags
            .is_sampled()
    );
    assert!(
        !parent(&format!("00-{TRACE}-{PARENT}-08"))
            .unwrap()
            .flags
            .is_sampled()
    );
}

#[test]
#[allow(clippy::too_many_lines)] // A table: one row per rule of the specification.
fn tracestate_table() {
    use TraceStateError::{BadKey, BadValue, DuplicateKey, MissingEquals, TooManyMembers};
    let members = |count: usize| {
        (0..count)
            .map(|index| format!("k{index}=v"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let rows: Vec<(&str, String, Result<&str, TraceStateError>)> = vec![
        (
            "single member",
            "congo=t61rcWkgMzE".into(),
            Ok("congo=t61rcWkgMzE"),
        ),
        (
            "two members keep order",
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".into(),
            Ok("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ),
        (
            "multi-tenant key",
            "fw529a3039@dt=x,tenant1@vendor-sys=y".into(),
            Ok("fw529a3039@dt=x,tenant1@vendor-sys=y"),
        ),
        ("key characters", "a_-*/0=1".into(), Ok("a_-*/0=1")),
        (
            "OWS around members",
            " \ta=1 ,\t b=2 \t".into(),
            Ok("a=1,b=2"),
        ),
        ("empty members", ",a=1,, ,b=2,".into(), Ok("a=1,b=2")),
        ("empty header", String::new(), Ok("")),
        ("whitespace-only header", "  ".into(), Ok("")),
        ("value keeps leading spaces", "a=  1".into(), Ok("a=  1")),
        (
            "value with printable punctuation",
            "a=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~".into(),
            Ok("a=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~"),
        ),
        (
            "32 members",
            members(32),
            Ok(Box::leak(members(32).into_boxed_str())),
        ),
        (
            "key of 256 characters",
            format!("a{}=1", "b".repeat(255)),
            Ok(Box::leak(
                format!("a{}=1", "b".repeat(255)).into_boxed_str(),
            )),
        ),
        (
            "value of 256 characters",
            format!("a={}", "v".repeat(256)),
            Ok(Box::leak(format!("a={}", "v".repeat(256)).into_boxed_str())),
        ),
        ("33 members", members(33), Err(TooManyMembers)),
        (
            "duplicate key",
            "a=1,b=2,a=3".into(),
            Err(DuplicateKey { member: 2 }),
        ),
        ("uppercase key", "Congo=1".into(), Err(BadKey { member: 0 })),
        (
            "simple key starting with a digit",
            "1a=1".into(),
            Err(BadKey { member: 0 }),
        ),
        (
            "key of 257 characters",
            format!("a{}=1", "b".repeat(256)),
            Err(BadKey { member: 0 }),
        ),
        (
            "key with a space before =",
            "a =1".into(),
            Err(BadKey { member: 0 }),
        ),
        (
            "two @ in a key",
            "a@b@c=1".into(),
            Err(BadKey { member: 0 }),
        ),
        (
            "tenant of 242 characters",
            format!("{}@sys=1", "t".repeat(242)),
            Err(BadKey { member: 0 }),
        ),
        (
            "system of 15 characters",
            format!("t@{}=1", "s".repeat(15)),
            Err(BadKey { member: 0 }),
        ),
        (
            "system starting with a digit",
            "t@1sys=1".into(),
            Err(BadKey { member: 0 }),
        ),
        ("empty tenant", "@sys=1".into(), Err(BadKey { member: 0 })),
        ("empty value", "a=".into(), Err(BadValue { member: 0 })),
        ("value with =", "a=b=c".into(), Err(BadValue { member: 0 })),
        (
            "value of 257 characters",
            format!("a={}", "v".repeat(257)),
            Err(BadValue { member: 0 }),
        ),
        (
            "value with a tab inside",
            "a=1\t2".into(),
            Err(BadValue { member: 0 }),
        ),
        (
            "value with a control character",
            "a=1\u{1}".into(),
            Err(BadValue { member: 0 }),
        ),
        (
            "value with non-ASCII",
            "a=caf\u{e9}".into(),
            Err(BadValue { member: 0 }),
        ),
        (
            "member without =",
            "a=1,b".into(),
            Err(MissingEquals { member: 1 }),
        ),
    ];
    for (rule, value, expected) in rows {
        let parsed = value.parse::<TraceState>().map(|state| state.to_string());
        assert_eq!(
            parsed.as_deref().map_err(Clone::clone),
            expected,
            "{rule}: {value:?}"
        );
    }
}

#[test]
fn header_names_are_case_insensitive_and_repeats_invalid() {
    let value = format!("00-{TRACE}-{PARENT}-01");
    let incoming =
        Incoming::from_headers([("TraceParent", value.as_str()), ("TRACESTATE", "congo=1")]);
    assert_eq!(
        incoming
            .correlation_id()
            .as_uuid()
            .unwrap()
            .simple()
            .to_string(),
        TRACE
    );
    assert_eq!(incoming.trace_state().unwrap().get("congo"), Some("1"));

    let repeated = Incoming::from_headers([
        ("traceparent", value.as_str()),
        ("Traceparent", value.as_str()),
        ("tracestate", "congo=1"),
    ]);
    assert_eq!(repeated.source(), correlation::IdSource::Generated);
    assert_eq!(
        repeated.rejections()[0].reason,
        RejectionReason::TraceParent(TraceParentError::Repeated)
    );
    assert!(
        repeated.trace_state().is_none(),
        "tracestate is dropped with an invalid traceparent"
    );
}

#[test]
fn repeated_tracestate_fields_are_combined() {
    let value = format!("00-{TRACE}-{PARENT}-01");
    let incoming = Incoming::from_headers([
        ("traceparent", value.as_str()),
        ("tracestate", "a=1,"),
        ("tracestate", ""),
        ("tracestate", " b=2"),
    ]);
    assert_eq!(incoming.trace_state().unwrap().to_string(), "a=1,b=2");
    let duplicate = Incoming::from_headers([
        ("traceparent", value.as_str()),
        ("tracestate", "a=1"),
        ("tracestate", "a=2"),
    ]);
    assert!(duplicate.trace_state().is_none());
    assert_eq!(
        duplicate.source(),
        correlation::IdSource::TraceParent,
        "a bad tracestate does not affect traceparent"
    );
}
