//! The picture at the end of a run: the breaker's state across the terminal, above the
//! requests per second by how they were answered.

use std::{fmt::Write as _, time::Duration};

use keel_breaker::State;

use crate::{demo::Transition, service::Answered};

/// Columns of the picture.
pub const WIDTH: usize = 60;

const BARS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

fn state_char(state: State) -> char {
    match state {
        State::Closed => '─',
        State::Open => '█',
        State::HalfOpen => '▒',
        // An isolated breaker is held open by hand.
        State::Isolated => '▓',
    }
}

/// Which state a column shows when several occur in it: the higher rank.
fn rank(state: State) -> u8 {
    match state {
        State::Closed => 0,
        State::Open => 1,
        State::Isolated => 2,
        State::HalfOpen => 3,
    }
}

/// The breaker's state at `at`: the last transition before it, else closed.
fn state_at(transitions: &[Transition], at: Duration) -> State {
    transitions
        .iter()
        .take_while(|transition| transition.at <= at)
        .last()
        .map_or(State::Closed, |transition| transition.to)
}

/// Renders the timeline of a run lasting `total`: one column per `total / WIDTH`.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
// Column arithmetic on small counts and durations: precision is irrelevant at this scale.
pub fn render(
    answers: &[(Duration, Answered)],
    transitions: &[Transition],
    total: Duration,
) -> String {
    let total = total.max(Duration::from_millis(1));
    let column_secs = total.as_secs_f64() / WIDTH as f64;
    let column_of = |at: Duration| ((at.as_secs_f64() / column_secs) as usize).min(WIDTH - 1);
    let mut counts = [[0u32; WIDTH]; 3];
    for &(at, answered) in answers {
        let row = match answered {
            Answered::Upstream => 0,
            Answered::CacheBreakerOpen | Answered::CacheUpstreamFailed => 1,
            Answered::Rejected | Answered::Failed => 2,
        };
        counts[row][column_of(at)] += 1;
    }
    let peak = counts.iter().flatten().copied().max().unwrap_or(0).max(1);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "timeline ({:.1} s, one column = {:.0} ms):",
        total.as_secs_f64(),
        column_secs * 1000.0
    );
    let mut line = String::from("  breaker   │");
    // A state entered inside a column shows in it, half-open (a probe, often a few
    // milliseconds) over open over closed, so every probe stays visible.
    for column in 0..WIDTH {
        let start = Duration::from_secs_f64(column_secs * column as f64);
        let end = Duration::from_secs_f64(column_secs * (column + 1) as f64);
        let mut state = state_at(transitions, start);
        for transition in transitions.iter().filter(|t| t.at >= start && t.at < end) {
            if rank(transition.to) > rank(state) {
                state = transition.to;
            }
        }
        line.push(state_char(state));
    }
    let _ = writeln!(out, "{line}│");
    let labels = ["upstream", "cache", "503/502"];
    for (row, label) in labels.iter().enumerate() {
        let mut line = format!("  {label:<9} │");
        for &count in &counts[row] {
            // Zero stays blank; anything else gets at least the lowest bar.
            let level = (count as usize * 8).div_ceil(peak as usize).clamp(0, 8);
            line.push(BARS[level]);
        }
        let _ = writeln!(out, "{line}│");
    }
    let _ = writeln!(out, "            └{}┘", "─".repeat(WIDTH));
    let _ = writeln!(
        out,
        "             0 s{:>width$}",
        format!("{:.1} s", total.as_secs_f64()),
        width = WIDTH - 3
    );
    let _ = write!(
        out,
        "  breaker: ─ closed  █ open  ▒ half-open; bars: requests per column (peak {:.0}/s)",
        f64::from(peak) / column_secs
    );
    out
}
