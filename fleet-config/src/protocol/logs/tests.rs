//! The bounds of a log tail, its cleaning, and the wire compatibility of the log fields with
//! agents and controllers that predate them.

use proptest::prelude::*;

use super::*;
use crate::protocol::{
    CheckinRequest, CheckinResponse, Desired, HealthState, Telemetry, UpdatePhase,
};

fn line(text: &str) -> LogLine {
    LogLine {
        at_ms: Some(1),
        stream: Some(LogStream::Stdout),
        text: text.to_owned(),
    }
}

fn source(name: &str, lines: Vec<LogLine>) -> LogSource {
    LogSource {
        name: name.to_owned(),
        container: Some(format!("c-{name}")),
        status: LogStatus::Ok,
        detail: None,
        lines,
        omitted: 0,
    }
}

fn tail(sources: Vec<LogSource>) -> LogTail {
    LogTail {
        request_id: 7,
        collected_ms: 1,
        sources,
        truncated: false,
    }
}

#[test]
fn a_tail_within_its_bounds_is_left_as_it_is() {
    let t = tail(vec![
        source("agent", vec![line("started"), line("checked in")]),
        source("app/web", vec![line("GET /healthz 200")]),
    ]);
    assert_eq!(t.clone().bounded(), t);
}

#[test]
fn cuts_never_split_a_character_and_end_in_an_ellipsis() {
    // 'é' is two bytes, '€' three, '🦀' four: every cut point falls inside one somewhere.
    for text in ["é".repeat(3000), "€".repeat(3000), "🦀".repeat(3000)] {
        for max in [1, 2, 3, 4, 5, 6, 7, 100, MAX_LOG_LINE_BYTES] {
            let c = cut(&text, max);
            assert!(c.len() <= max, "{} > {max}", c.len());
            assert!(text.starts_with(c.trim_end_matches('…')));
        }
        let c = cut(&text, MAX_LOG_LINE_BYTES);
        assert!(c.ends_with('…'));
        assert!(
            c.len() > MAX_LOG_LINE_BYTES - 8,
            "cut near the bound: {}",
            c.len()
        );
    }
    assert_eq!(cut("short", 10), "short");
    assert_eq!(cut("exactly10!", 10), "exactly10!");
}

#[test]
fn a_long_line_is_cut_to_the_line_bound() {
    let long = format!("{}{}", "x".repeat(MAX_LOG_LINE_BYTES - 1), "€€€");
    let t = tail(vec![source("app/web", vec![line(&long)])]).bounded();
    let text = &t.sources[0].lines[0].text;
    assert!(text.len() <= MAX_LOG_LINE_BYTES, "{}", text.len());
    assert!(text.ends_with('…'));
    assert!(text.starts_with("xxxx"));
}

#[test]
fn terminal_escapes_are_removed_and_controls_replaced() {
    assert_eq!(
        clean("\u{1b}[32mINFO\u{1b}[0m ready\r\n"),
        "INFO ready",
        "colours and the line end"
    );
    assert_eq!(clean("\u{1b}]0;title\u{7}text"), "text", "OSC to BEL");
    assert_eq!(clean("\u{1b}]0;title\u{1b}\\text"), "text", "OSC to ST");
    assert_eq!(clean("a\u{0}b\u{7}c\td"), "a\u{fffd}b\u{fffd}c\td");
    assert_eq!(clean("one\ntwo"), "one\u{fffd}two", "no line break inside");
    assert_eq!(
        clean("<script>alert(1)</script>"),
        "<script>alert(1)</script>",
        "text stays text"
    );
    assert_eq!(clean("trailing esc \u{1b}"), "trailing esc \u{fffd}");
}

#[test]
fn lines_beyond_the_per_source_bound_are_dropped_oldest_first_and_counted() {
    let lines: Vec<LogLine> = (0..MAX_LOG_LINES + 5)
        .map(|i| line(&i.to_string()))
        .collect();
    let t = tail(vec![source("app/web", lines)]).bounded();
    let s = &t.sources[0];
    assert_eq!(s.lines.len(), MAX_LOG_LINES as usize);
    assert_eq!(s.lines[0].text, "5", "the newest kept");
    assert_eq!(s.omitted, 5);
    assert!(t.truncated);
}

#[test]
fn sources_beyond_the_bound_are_dropped() {
    let sources = (0..MAX_LOG_SOURCES + 3)
        .map(|i| source(&format!("s/{i}"), vec![line("x")]))
        .collect();
    let t = tail(sources).bounded();
    assert_eq!(t.sources.len(), MAX_LOG_SOURCES);
    assert!(t.truncated);
}

#[test]
fn the_byte_cap_keeps_the_newest_lines_and_shares_fairly() {
    // A chatty container far over the cap beside a quiet agent: the agent keeps all its lines.
    let chatty: Vec<LogLine> = (0..MAX_LOG_LINES)
        .map(|i| line(&format!("{i:05} {}", "y".repeat(1500))))
        .collect();
    let agent: Vec<LogLine> = (0..50).map(|i| line(&format!("agent {i}"))).collect();
    let t = tail(vec![
        source("agent", agent.clone()),
        source("app/chatty", chatty),
    ])
    .bounded();
    assert!(t.cost() <= MAX_LOG_TAIL_BYTES, "{}", t.cost());
    assert_eq!(
        t.sources[0].lines, agent,
        "the quiet source keeps everything"
    );
    let c = &t.sources[1];
    assert!(c.omitted > 0 && t.truncated);
    assert_eq!(
        c.lines.last().map(|l| &l.text[..5]),
        Some(format!("{:05}", MAX_LOG_LINES - 1).as_str()),
        "the newest line is kept"
    );
    assert_eq!(c.lines.len() as u64 + c.omitted, u64::from(MAX_LOG_LINES));
    // The JSON of a bounded tail stays far below the controller's 1 MiB body limit.
    let json = serde_json::to_vec(&t).expect("json");
    assert!(json.len() < 2 * MAX_LOG_TAIL_BYTES, "{}", json.len());
}

#[test]
fn fair_shares_fill_small_claims_and_split_the_rest() {
    assert_eq!(fair_shares(&[10, 1000, 1000], 610), vec![10, 300, 300]);
    assert_eq!(fair_shares(&[10, 20], 1000), vec![10, 20]);
    assert_eq!(fair_shares(&[], 1000), Vec::<usize>::new());
    assert_eq!(fair_shares(&[500, 500], 0), vec![0, 0]);
}

#[test]
fn selectors_name_the_agent_a_stack_a_service_or_both() {
    let r = |s: &[&str]| LogRequest {
        id: 1,
        lines: 10,
        services: s.iter().map(|s| s.to_string()).collect(),
    };
    assert!(
        r(&[]).selects("agent") && r(&[]).selects("app/web"),
        "empty: everything"
    );
    assert!(r(&["agent"]).selects("agent"));
    assert!(!r(&["agent"]).selects("app/web"));
    assert!(r(&["web"]).selects("app/web"), "a service");
    assert!(r(&["app"]).selects("app/web"), "a stack");
    assert!(r(&["app/web"]).selects("app/web"));
    assert!(!r(&["app/side"]).selects("app/web"));
    assert!(r(&["  "]).selects("app/web"), "blank selectors are none");
    assert_eq!(r(&[]).lines(), 10);
    assert_eq!(LogRequest { lines: 0, ..r(&[]) }.lines(), 1);
    assert_eq!(
        LogRequest {
            lines: u32::MAX,
            ..r(&[])
        }
        .lines(),
        MAX_LOG_LINES
    );
}

fn request() -> CheckinRequest {
    CheckinRequest {
        device_id: "pi-01".into(),
        agent_version: "0.1.0".into(),
        current: None,
        previous: None,
        phase: UpdatePhase::Idle,
        health: HealthState::Healthy,
        last_result: None,
        bad_releases: Vec::new(),
        telemetry: Telemetry::default(),
        events: Vec::new(),
        long_poll_secs: 0,
        logs: None,
    }
}

#[test]
fn an_old_agents_check_in_reads_without_the_log_fields_and_new_ones_leave_them_out_when_empty() {
    // What an agent that predates logs sends.
    let old = r#"{"device_id":"pi-01","agent_version":"0.0.9","current":null,"previous":null,
        "phase":"idle","health":"healthy","last_result":null}"#;
    let req: CheckinRequest = serde_json::from_str(old).expect("an old agent's check-in reads");
    assert_eq!(req.logs, None);
    // Without a tail, a check-in is what it was.
    let json = serde_json::to_value(request()).expect("json");
    assert!(json.get("logs").is_none(), "{json}");
    // Without a request, an answer is what it was (`wire_format_is_stable` has the bytes).
    let answer = CheckinResponse {
        desired: Desired::Hold,
        emergency_stop: false,
        safe_mode: false,
        acked_seq: 0,
        next_checkin_secs: 60,
        logs: None,
    };
    let json = serde_json::to_value(answer).expect("json");
    assert!(json.get("logs").is_none(), "{json}");
}

/// The check-in and its answer as they were before the log fields (the types an older
/// controller and an older agent decode with).
#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct OldCheckinRequest {
    device_id: String,
    agent_version: String,
    phase: UpdatePhase,
    health: HealthState,
    #[serde(default)]
    long_poll_secs: u64,
}

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct OldCheckinResponse {
    desired: Desired,
    emergency_stop: bool,
    #[serde(default)]
    safe_mode: bool,
    acked_seq: u64,
    next_checkin_secs: u64,
}

#[test]
fn older_controllers_and_agents_ignore_the_log_fields() {
    let mut req = request();
    req.logs = Some(Tolerant::Read(tail(vec![source(
        "agent",
        vec![line("hi")],
    )])));
    let json = serde_json::to_string(&req).expect("json");
    assert!(json.contains("\"logs\":{\"request_id\":7"), "{json}");
    let old: OldCheckinRequest = serde_json::from_str(&json).expect("an older controller reads it");
    assert_eq!(old.device_id, "pi-01");
    let back: CheckinRequest = serde_json::from_str(&json).expect("round trip");
    assert_eq!(back, req);

    let answer = CheckinResponse {
        desired: Desired::Hold,
        emergency_stop: false,
        safe_mode: false,
        acked_seq: 3,
        next_checkin_secs: 0,
        logs: Some(LogRequest {
            id: 9,
            lines: 50,
            services: vec!["web".into()],
        }),
    };
    let json = serde_json::to_string(&answer).expect("json");
    assert!(
        json.ends_with(r#""logs":{"id":9,"lines":50,"services":["web"]}}"#),
        "{json}"
    );
    let old: OldCheckinResponse = serde_json::from_str(&json).expect("an older agent reads it");
    assert_eq!(old.acked_seq, 3);
    let back: CheckinResponse = serde_json::from_str(&json).expect("round trip");
    assert_eq!(back, answer);
}

#[test]
fn a_tail_that_does_not_read_leaves_the_check_in_readable() {
    let json = r#"{"device_id":"pi-01","agent_version":"9.0.0","current":null,"previous":null,
        "phase":"idle","health":"healthy","last_result":null,
        "logs":{"request_id":"not a number","sources":7}}"#;
    let req: CheckinRequest = serde_json::from_str(json).expect("the check-in still reads");
    match req.logs {
        Some(Tolerant::Unreadable(why)) => assert!(
            why.contains("request_id") || why.contains("invalid"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    // Statuses and streams a newer agent may add read as unknown, not as an error.
    let newer = r#"{"request_id":1,"sources":[{"name":"x","status":"paused",
        "lines":[{"text":"t","stream":"stdin"}]}]}"#;
    let t: LogTail = serde_json::from_str(newer).expect("reads");
    assert_eq!(t.sources[0].status, LogStatus::Unknown);
    assert_eq!(t.sources[0].lines[0].stream, Some(LogStream::Other));
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[a-z€🦀\u{1b}\\[\\]\n\r\t]{0,200}",
        Just("é".repeat(MAX_LOG_LINE_BYTES)),
        Just(format!("\u{1b}[1m{}", "🦀".repeat(MAX_LOG_LINE_BYTES / 3))),
    ]
}

fn any_tail() -> impl Strategy<Value = LogTail> {
    let line = (any_text(), any::<Option<u64>>()).prop_map(|(text, at_ms)| LogLine {
        at_ms,
        stream: None,
        text,
    });
    let src =
        (any_text(), prop::collection::vec(line, 0..60)).prop_map(|(name, lines)| LogSource {
            name,
            container: None,
            status: LogStatus::Ok,
            detail: None,
            lines,
            omitted: 0,
        });
    prop::collection::vec(src, 0..10).prop_map(tail)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_bounded_tail_is_within_every_bound_and_bounding_again_changes_nothing(t in any_tail()) {
        let b = t.clone().bounded();
        prop_assert!(b.cost() <= MAX_LOG_TAIL_BYTES);
        prop_assert!(b.sources.len() <= MAX_LOG_SOURCES);
        for (s, orig) in b.sources.iter().zip(&t.sources) {
            prop_assert!(s.name.len() <= MAX_LOG_NAME_BYTES);
            prop_assert!(s.lines.len() <= MAX_LOG_LINES as usize);
            prop_assert_eq!(s.lines.len() as u64 + s.omitted, orig.lines.len() as u64);
            for l in &s.lines {
                prop_assert!(l.text.len() <= MAX_LOG_LINE_BYTES);
                prop_assert!(!l.text.chars().any(|c| c.is_control() && c != '\t'));
            }
        }
        prop_assert_eq!(b.clone().bounded(), b);
    }
}
