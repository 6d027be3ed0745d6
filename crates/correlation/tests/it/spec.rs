//! W3C Trace Context rules, one table row per rule (values from the specification's text).

use keel_correlation::{
    IdSource, Incoming, Mode, Propagation, RejectionReason, Sampling, TraceContextLevel,
    TraceFlags, TraceParent, TraceParentError, TraceState, TraceStateError, Tracer,
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
            "Level 2's random-trace-id flag is read and sent on",
            format!("00-{TRACE}-{PARENT}-02"),
            Ok(0x02),
        ),
        (
            "random and sampled",
            format!("00-{TRACE}-{PARENT}-03"),
            Ok(0x03),
        ),
        (
            "a reserved bit next to random",
            format!("00-{TRACE}-{PARENT}-06"),
            Ok(0x06),
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
                    format!("00-{TRACE}-{PARENT}-{:02x}", flags & 0x03),
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
    use TraceStateError::{BadKey, BadValue, MissingEquals, TooManyMembers};
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
            "duplicate key: only the later entry is dropped",
            "a=1,b=2,a=3".into(),
            Ok("a=1,b=2"),
        ),
        (
            "duplicate key with the same value",
            "foo=1,foo=1".into(),
            Ok("foo=1"),
        ),
        (
            "33 members with a duplicate are 32 distinct",
            format!("{},k0=w", members(32)),
            Ok(Box::leak(members(32).into_boxed_str())),
        ),
        (
            "key ending in @ (Level 2)",
            "foo@=1,bar=2".into(),
            Ok("foo@=1,bar=2"),
        ),
        (
            "key with @@ (Level 2)",
            "foo@@bar=1,bar=2".into(),
            Ok("foo@@bar=1,bar=2"),
        ),
        (
            "key with two @ (Level 2)",
            "foo@bar@baz=1,bar=2".into(),
            Ok("foo@bar@baz=1,bar=2"),
        ),
        (
            "simple key starting with a digit (Level 2)",
            "1a=1".into(),
            Ok("1a=1"),
        ),
        (
            "tenant of 241 and system of 14 characters",
            format!("{}@{}=1", "t".repeat(241), "v".repeat(14)),
            Ok(Box::leak(
                format!("{}@{}=1", "t".repeat(241), "v".repeat(14)).into_boxed_str(),
            )),
        ),
        (
            "tenant of 242 characters (Level 2: only the total counts)",
            format!("{}@v=1", "t".repeat(242)),
            Ok(Box::leak(
                format!("{}@v=1", "t".repeat(242)).into_boxed_str(),
            )),
        ),
        (
            "system of 15 characters (Level 2)",
            format!("t@{}=1", "v".repeat(15)),
            Ok(Box::leak(
                format!("t@{}=1", "v".repeat(15)).into_boxed_str(),
            )),
        ),
        (
            "system starting with a digit (Level 2)",
            "t@1sys=1".into(),
            Ok("t@1sys=1"),
        ),
        (
            "key of 257 characters with @",
            format!("{}@{}=1", "t".repeat(200), "v".repeat(56)),
            Err(BadKey { member: 0 }),
        ),
        (
            "key starting with @",
            "@foo=1,bar=2".into(),
            Err(BadKey { member: 0 }),
        ),
        (
            "key with a dot",
            "foo.bar=1".into(),
            Err(BadKey { member: 0 }),
        ),
        ("empty key", "=1".into(), Err(BadKey { member: 0 })),
        (
            "empty value before a valid member",
            "foo=,bar=3".into(),
            Err(BadValue { member: 0 }),
        ),
        ("trailing OWS after a value", "foo=1 \t".into(), Ok("foo=1")),
        ("uppercase key", "Congo=1".into(), Err(BadKey { member: 0 })),
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
            "empty part before @",
            "@sys=1".into(),
            Err(BadKey { member: 0 }),
        ),
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
    assert_eq!(repeated.source(), keel_correlation::IdSource::Generated);
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
        ("tracestate", "a=1,b=3"),
        ("tracestate", "a=2"),
    ]);
    assert_eq!(
        duplicate.trace_state().map(ToString::to_string).as_deref(),
        Some("a=1,b=3"),
        "only the duplicated entry is dropped"
    );
    assert_eq!(
        duplicate.source(),
        keel_correlation::IdSource::TraceParent,
        "a bad tracestate does not affect traceparent"
    );
}

/// The `traceparent` a service built on the crate sends on one outgoing call, for `headers`
/// received, under `propagation`.
fn sent_traceparent(propagation: &Propagation, headers: &[(&str, &str)]) -> TraceParent {
    let incoming = propagation.incoming(headers.iter().copied());
    Tracer::off().continue_trace_sync(incoming, "GET /", || {
        keel_correlation::client_call_sync("call", |headers| {
            headers
                .iter()
                .find(|(name, _)| *name == "traceparent")
                .map(|(_, value)| value.parse::<TraceParent>().unwrap())
                .unwrap()
        })
    })
}

/// A row of a header table: the rule, the headers received, the flags sent.
type Row<'a> = (&'a str, Vec<(&'a str, String)>, u8);

fn sent_flags(propagation: &Propagation, headers: &[(&str, &str)]) -> u8 {
    sent_traceparent(propagation, headers).flags.bits()
}

#[test]
fn random_flag_is_propagated_and_set_on_new_traces() {
    let defaults = Propagation::new();
    let received = |flags: &str| format!("00-{TRACE}-{PARENT}-{flags}");
    // (rule, headers, flags sent)
    let fresh = if cfg!(feature = "v7") { 0x01 } else { 0x03 };
    let rows: Vec<Row<'_>> = vec![
        (
            "received random is sent on",
            vec![("traceparent", received("02"))],
            0x02,
        ),
        (
            "received random and sampled",
            vec![("traceparent", received("03"))],
            0x03,
        ),
        (
            "received without random stays without",
            vec![("traceparent", received("01"))],
            0x01,
        ),
        (
            "reserved bits are zeroed, random kept",
            vec![("traceparent", received("fe"))],
            0x02,
        ),
        ("new trace: its UUID v4 trace id is random", vec![], fresh),
        (
            "invalid traceparent restarts with a random trace id",
            vec![("traceparent", format!("00-{}-{PARENT}-02", "0".repeat(32)))],
            fresh,
        ),
        (
            "a text correlation id gets a random trace id",
            vec![("x-correlation-id", "order-7".to_owned())],
            0x03,
        ),
        (
            "a caller's UUID is not known to be random",
            vec![(
                "x-correlation-id",
                "4bf92f35-77b3-4da6-a3ce-929d0e0e4736".to_owned(),
            )],
            0x01,
        ),
    ];
    for (rule, headers, expected) in rows {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        assert_eq!(sent_flags(&defaults, &headers), expected, "{rule}");
    }
    // A trace started without a request: a fresh UUID v4 as trace id.
    let flags = Tracer::off().trace_sync("job", || keel_correlation::current().unwrap().flags());
    assert_eq!(flags.bits(), fresh, "start_trace sets random on a fresh id");
}

#[test]
fn sampling_decides_only_new_traces() {
    let received = format!("00-{TRACE}-{PARENT}-01");
    let never = Propagation::new().sampling(Sampling::Never);
    let random = if cfg!(feature = "v7") { 0 } else { 0x02 };
    assert_eq!(sent_flags(&never, &[]), random, "never: not sampled");
    assert_eq!(
        sent_flags(&never, &[("traceparent", &received)]),
        0x01,
        "a continued trace keeps the caller's decision"
    );
    let none = Propagation::new().sampling(Sampling::Ratio(0.0));
    let all = Propagation::new().sampling(Sampling::Ratio(1.0));
    let half = Propagation::new().sampling(Sampling::Ratio(0.5));
    let mut sampled = 0;
    for _ in 0..200 {
        assert_eq!(sent_flags(&none, &[]) & 1, 0);
        assert_eq!(sent_flags(&all, &[]) & 1, 1);
        sampled += u32::from(sent_flags(&half, &[]) & 1);
    }
    // 200 fair coin flips: outside 40..160 has probability below 1e-17.
    assert!(
        (40..160).contains(&sampled),
        "{sampled} of 200 sampled at 0.5"
    );
    // The decision is a function of the trace id, the same in every service.
    for _ in 0..20 {
        let incoming = half.incoming([("x-correlation-id", "order-7")]);
        assert_eq!(
            incoming.flags().is_sampled(),
            Sampling::Ratio(0.5).sampled(incoming.trace_id())
        );
    }
    // Uniform even over consecutive ids that differ only in a counter (UUID v7's low bits).
    let consecutive = (0..1000u128)
        .filter(|counter| {
            let trace_id =
                keel_correlation::TraceId::from_u128((0x0190 << 112) | (counter + 1)).unwrap();
            Sampling::Ratio(0.5).sampled(trace_id)
        })
        .count();
    assert!(
        (400..600).contains(&consecutive),
        "{consecutive} of 1000 consecutive ids"
    );
}

#[test]
fn restart_ignores_the_incoming_trace() {
    let restart = Propagation::new().mode(Mode::Restart);
    let received = format!("00-{TRACE}-{PARENT}-00");
    let incoming = restart.incoming([
        ("traceparent", received.as_str()),
        ("tracestate", "congo=1"),
        ("x-correlation-id", "caller-chosen"),
    ]);
    assert_eq!(incoming.source(), IdSource::Generated);
    assert_ne!(incoming.trace_id().to_string(), TRACE);
    assert!(incoming.trace_state().is_none());
    assert_eq!(incoming.parent_span_id(), None);
    assert!(
        incoming.flags().is_sampled(),
        "a new trace, sampled by default"
    );
    assert!(incoming.rejections().is_empty(), "ignored, not rejected");
    let sent = sent_traceparent(&restart, &[("traceparent", &received)]);
    assert_ne!(sent.trace_id.to_string(), TRACE);
}

#[test]
fn pass_through_forwards_the_trace_unchanged() {
    let pass = Propagation::new()
        .mode(Mode::PassThrough)
        .tracestate_key("acme")
        .unwrap();
    let received = format!("00-{TRACE}-{PARENT}-03");
    let incoming = pass.incoming([
        ("traceparent", received.as_str()),
        ("tracestate", "congo=1,rojo=2"),
    ]);
    let (first, second, own_span) = Tracer::off().continue_trace_sync(incoming, "proxy", || {
        let call = || keel_correlation::client_call_sync("forward", |headers| headers);
        (
            call(),
            call(),
            keel_correlation::current().unwrap().span_id(),
        )
    });
    for headers in [&first, &second] {
        assert_eq!(headers[0], ("traceparent", received.clone()));
        assert_eq!(headers[1], ("tracestate", "congo=1,rojo=2".to_owned()));
    }
    assert_ne!(
        own_span.to_string(),
        PARENT,
        "its own lines still have their own span"
    );
}

#[test]
fn own_tracestate_entry_is_added_in_front_and_updated() {
    let propagation = Propagation::new().tracestate_key("acme").unwrap();
    let received = format!("00-{TRACE}-{PARENT}-01");
    let incoming = propagation.incoming([
        ("traceparent", received.as_str()),
        ("tracestate", "congo=1,acme=old,rojo=2"),
    ]);
    let headers = Tracer::off().continue_trace_sync(incoming, "GET /", || {
        keel_correlation::client_call_sync("call", |headers| headers)
    });
    let parent: TraceParent = headers[0].1.parse().unwrap();
    assert_eq!(
        headers[1],
        (
            "tracestate",
            format!("acme={},congo=1,rojo=2", parent.parent_id)
        )
    );
    assert!(Propagation::new().tracestate_key("@bad").is_err());
    assert!(Propagation::new().tracestate_key("Bad").is_err());
}

#[test]
fn outgoing_tracestate_is_truncated_to_512_long_entries_first() {
    let long = |key: &str| format!("{key}={}", "v".repeat(150));
    let short: Vec<String> = (0..20)
        .map(|index| format!("k{index:02}={}", "s".repeat(16)))
        .collect();
    let received = format!(
        "{},{},{},{}",
        short[..10].join(","),
        long("big1"),
        short[10..].join(","),
        long("big2")
    );
    let mut state: TraceState = received.parse().unwrap();
    assert!(state.header_len() > 512);
    state.truncate(512);
    let text = state.to_string();
    assert!(text.len() <= 512, "{}", text.len());
    assert!(
        !text.contains("big1") && !text.contains("big2"),
        "entries over 128 go first"
    );
    assert_eq!(state.len(), 20, "then nothing else needed to go");
    // And a service sends it truncated.
    let value = format!("00-{TRACE}-{PARENT}-01");
    let incoming =
        Incoming::from_headers([("traceparent", value.as_str()), ("tracestate", &received)]);
    let headers =
        Tracer::off().continue_trace_sync(incoming, "GET /", keel_correlation::outgoing_headers);
    assert_eq!(headers[1].1, text);
}

#[test]
fn level1_mode_follows_the_recommendation_strictly() {
    let level1 = Propagation::new().level(TraceContextLevel::Level1);
    let value = format!("00-{TRACE}-{PARENT}-00");
    // (rule, tracestate fields received, tracestate kept)
    let rows: Vec<(&str, Vec<String>, Option<&str>)> = vec![
        ("valid", vec!["foo=1,bar=2".into()], Some("foo=1,bar=2")),
        (
            "duplicated key drops the header",
            vec!["foo=1,foo=1".into()],
            None,
        ),
        (
            "duplicated across fields",
            vec!["foo=1".into(), "foo=2".into()],
            None,
        ),
        ("key ending in @", vec!["foo@=1,bar=2".into()], None),
        ("key with @@", vec!["foo@@bar=1,bar=2".into()], None),
        ("key with two @", vec!["foo@bar@baz=1,bar=2".into()], None),
        ("key starting with @", vec!["@foo=1,bar=2".into()], None),
        (
            "simple key starting with a digit",
            vec!["1a=1".into()],
            None,
        ),
        (
            "tenant 241, system 14",
            vec![
                "foo=1".into(),
                format!("{}@{}=1", "t".repeat(241), "v".repeat(14)),
            ],
            Some(Box::leak(
                format!("foo=1,{}@{}=1", "t".repeat(241), "v".repeat(14)).into_boxed_str(),
            )),
        ),
        (
            "tenant 242",
            vec!["foo=1".into(), format!("{}@v=1", "t".repeat(242))],
            None,
        ),
        (
            "system 15",
            vec!["foo=1".into(), format!("t@{}=1", "v".repeat(15))],
            None,
        ),
        (
            "simple key of 256",
            vec!["foo=1".into(), format!("{}=1", "z".repeat(256))],
            Some(Box::leak(
                format!("foo=1,{}=1", "z".repeat(256)).into_boxed_str(),
            )),
        ),
    ];
    for (rule, fields, kept) in rows {
        let mut headers = vec![("traceparent", value.as_str())];
        headers.extend(fields.iter().map(|field| ("tracestate", field.as_str())));
        let incoming = level1.incoming(headers.iter().copied());
        assert_eq!(incoming.source(), IdSource::TraceParent, "{rule}");
        assert_eq!(
            incoming.trace_state().map(ToString::to_string).as_deref(),
            kept,
            "{rule}"
        );
    }
    // Level 1 defines only `sampled`: a received `random` is not sent on, nor set on new
    // traces.
    let received = format!("00-{TRACE}-{PARENT}-03");
    assert_eq!(sent_flags(&level1, &[("traceparent", &received)]), 0x01);
    assert_eq!(sent_flags(&level1, &[]), 0x01);
}
