//! The demo's timeline picture: a self-contained SVG with one lane per server, drawn from the
//! simulator's event log (`GET /sim/timeline`). Each lane shows when the machine launched
//! (booting, grey), joined Raft as a non-voter (pale), voted (its image's colour), led (a gold
//! band) and left; vertical lines mark the `consul-rehydrate` event, a chaos kill, the takeover
//! and the rollout's completion.
//!
//! A plain function from the events to a string, so it is tested without a simulator. Every
//! lane is a `<g class="lane" data-server=… data-image=…>` and every mark a `class="mark
//! <event>"` shape, so a test (or a curious user) can read the picture back.

use std::fmt::Write as _;

use serde::Deserialize;

/// One event as `/sim/timeline` serves it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Event {
    /// Unix milliseconds.
    pub at: u64,
    pub server: String,
    pub image: String,
    pub event: String,
}

/// What a vertical marker line stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    Fired,
    Kill,
    Takeover,
    Completed,
}

impl MarkerKind {
    fn class(self) -> &'static str {
        match self {
            MarkerKind::Fired => "fired",
            MarkerKind::Kill => "kill",
            MarkerKind::Takeover => "takeover",
            MarkerKind::Completed => "completed",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            MarkerKind::Fired => "#555",
            MarkerKind::Kill => "#d62728",
            MarkerKind::Takeover => "#9467bd",
            MarkerKind::Completed => "#2ca02c",
        }
    }
}

/// A dated vertical line with a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub at: u64,
    pub kind: MarkerKind,
    pub label: String,
}

/// What the picture shows.
#[derive(Debug, Clone)]
pub struct Picture<'a> {
    pub title: String,
    pub events: &'a [Event],
    pub markers: Vec<Marker>,
    /// The old image (drawn blue) and the new one (green); any other grey.
    pub old_image: String,
    pub new_image: String,
    /// Where the picture's time axis ends (unix ms): lanes still alive run to here.
    pub end: u64,
}

/// One server's life, from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lane {
    pub server: String,
    pub image: String,
    pub launched: Option<u64>,
    pub started: Option<u64>,
    pub joined: Option<u64>,
    pub voter: Option<u64>,
    /// Leadership periods, `(from, to)`; `to` is None while it still leads.
    pub led: Vec<(u64, Option<u64>)>,
    pub left: Option<u64>,
    pub killed: Option<u64>,
    pub terminated: Option<u64>,
}

impl Lane {
    /// When it stopped being part of the cluster: left Raft, else killed, else terminated.
    pub fn gone(&self) -> Option<u64> {
        self.left.or(self.killed).or(self.terminated)
    }
}

/// The lanes, in the order the servers first appear in the log (launch order).
pub fn lanes(events: &[Event]) -> Vec<Lane> {
    let mut lanes: Vec<Lane> = Vec::new();
    for e in events {
        let i = match lanes.iter().position(|l| l.server == e.server) {
            Some(i) => i,
            None => {
                lanes.push(Lane {
                    server: e.server.clone(),
                    image: e.image.clone(),
                    ..Lane::default()
                });
                lanes.len() - 1
            }
        };
        let lane = &mut lanes[i];
        let at = Some(e.at);
        match e.event.as_str() {
            "launched" => lane.launched = lane.launched.or(at),
            "started" => lane.started = lane.started.or(at),
            "joined" => lane.joined = lane.joined.or(at),
            "voter" => lane.voter = lane.voter.or(at),
            "leader" => lane.led.push((e.at, None)),
            "follower" => {
                if let Some(last) = lane.led.last_mut().filter(|l| l.1.is_none()) {
                    last.1 = at;
                }
            }
            "left" => lane.left = lane.left.or(at),
            "killed" => lane.killed = lane.killed.or(at),
            "terminated" => lane.terminated = lane.terminated.or(at),
            _ => {}
        }
    }
    lanes
}

const WIDTH: f64 = 1000.0;
const LABEL_W: f64 = 190.0;
const RIGHT_PAD: f64 = 30.0;
const TOP: f64 = 70.0;
const LANE_H: f64 = 34.0;
const BAR_H: f64 = 14.0;
const BOTTOM: f64 = 70.0;

/// Escapes text for SVG content and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A tick step (ms) giving about 8–15 ticks over `span_ms`.
fn tick_step(span_ms: u64) -> u64 {
    [500, 1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 60_000]
        .into_iter()
        .find(|s| span_ms / s <= 15)
        .unwrap_or(120_000)
}

/// The picture as a standalone SVG document.
pub fn render_svg(p: &Picture<'_>) -> String {
    let lanes = lanes(p.events);
    let start = p
        .events
        .iter()
        .map(|e| e.at)
        .chain(p.markers.iter().map(|m| m.at))
        .min()
        .unwrap_or(p.end);
    let end = p.end.max(start + 1);
    let span = (end - start) as f64;
    let plot_w = WIDTH - LABEL_W - RIGHT_PAD;
    let x = |t: u64| LABEL_W + (t.saturating_sub(start) as f64 / span) * plot_w;
    let height = TOP + LANE_H * lanes.len() as f64 + BOTTOM;
    // Times on the axis count from the event that started the rollout when there is one.
    let origin = p
        .markers
        .iter()
        .find(|m| m.kind == MarkerKind::Fired)
        .map_or(start, |m| m.at);
    let colour = |image: &str| {
        if image == p.new_image {
            "#2ca02c"
        } else if image == p.old_image {
            "#1f77b4"
        } else {
            "#7f7f7f"
        }
    };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="16" font-weight="bold">{}</text>"#,
        esc(&p.title)
    );

    // The time axis, in seconds from the rollout's start.
    let step = tick_step(end - start);
    let axis_y = TOP + LANE_H * lanes.len() as f64 + 10.0;
    let first = origin.saturating_sub((origin - start.min(origin)) / step * step);
    let mut t = first;
    while t <= end {
        let tx = x(t);
        let secs = (t as f64 - origin as f64) / 1000.0;
        // Half-second ticks need their decimal; whole ones read better without.
        let label = if step < 1_000 {
            format!("{secs:+.1} s")
        } else {
            format!("{secs:+.0} s")
        };
        let _ = writeln!(
            svg,
            r##"<line class="tick" x1="{tx:.1}" y1="{TOP}" x2="{tx:.1}" y2="{axis_y}" stroke="#eee"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{label}</text>"##,
            axis_y + 14.0
        );
        t += step;
    }

    for (i, lane) in lanes.iter().enumerate() {
        let y = TOP + LANE_H * i as f64 + (LANE_H - BAR_H) / 2.0;
        let mid = y + BAR_H / 2.0;
        let _ = writeln!(
            svg,
            r#"<g class="lane" data-server="{}" data-image="{}">"#,
            esc(&lane.server),
            esc(&lane.image)
        );
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{:.1}">{}</text><text x="120" y="{:.1}" fill="{}">{}</text>"#,
            mid + 4.0,
            esc(&lane.server),
            mid + 4.0,
            colour(&lane.image),
            esc(&lane.image)
        );
        let launched = lane.launched.unwrap_or(start);
        let gone = lane.gone().unwrap_or(end);
        let mut seg = |class: &str, from: u64, to: u64, fill: &str, opacity: f64| {
            if to > from {
                let _ = writeln!(
                    svg,
                    r#"<rect class="{class}" x="{:.1}" y="{y:.1}" width="{:.1}" height="{BAR_H}" fill="{fill}" fill-opacity="{opacity}"/>"#,
                    x(from),
                    (x(to) - x(from)).max(1.0)
                );
            }
        };
        let joined = lane.joined.unwrap_or(gone).min(gone);
        let voter = lane.voter.unwrap_or(gone).min(gone);
        seg("booting", launched, joined, "#bbb", 1.0);
        seg("nonvoter", joined, voter, colour(&lane.image), 0.35);
        seg("voting", voter, gone, colour(&lane.image), 1.0);
        for (from, to) in &lane.led {
            let to = to.unwrap_or(gone).min(gone);
            if to > *from {
                let _ = writeln!(
                    svg,
                    r##"<rect class="led" x="{:.1}" y="{:.1}" width="{:.1}" height="4" fill="#f2b701"/>"##,
                    x(*from),
                    y - 5.0,
                    (x(to) - x(*from)).max(1.0)
                );
            }
        }
        if let Some(t) = lane.launched {
            let _ = writeln!(
                svg,
                r##"<circle class="mark launched" cx="{:.1}" cy="{mid:.1}" r="4" fill="white" stroke="#333"><title>{} launched</title></circle>"##,
                x(t),
                esc(&lane.server)
            );
        }
        if let Some(t) = lane.voter {
            let cx = x(t);
            let _ = writeln!(
                svg,
                r##"<path class="mark voter" d="M{:.1} {mid:.1} L{cx:.1} {:.1} L{:.1} {mid:.1} L{cx:.1} {:.1} Z" fill="white" stroke="#333"><title>{} voter</title></path>"##,
                cx - 5.0,
                mid - 6.0,
                cx + 5.0,
                mid + 6.0,
                esc(&lane.server)
            );
        }
        for (from, _) in &lane.led {
            let _ = writeln!(
                svg,
                r##"<text class="mark leader" x="{:.1}" y="{:.1}" font-size="10" fill="#a07800">leader<title>{} leads</title></text>"##,
                x(*from) + 2.0,
                y - 7.0,
                esc(&lane.server)
            );
        }
        if let Some(t) = lane.killed {
            let cx = x(t);
            let _ = writeln!(
                svg,
                r##"<path class="mark killed" d="M{:.1} {:.1} L{:.1} {:.1}" stroke="#d62728" stroke-width="3"><title>{} killed</title></path>"##,
                cx,
                mid - 8.0,
                cx,
                mid + 8.0,
                esc(&lane.server)
            );
        }
        if let Some(t) = lane.left.or(lane.terminated) {
            let cx = x(t);
            let _ = writeln!(
                svg,
                r##"<path class="mark left" d="M{:.1} {:.1} L{:.1} {:.1} M{:.1} {:.1} L{:.1} {:.1}" stroke="#333" stroke-width="2"><title>{} left</title></path>"##,
                cx - 5.0,
                mid - 5.0,
                cx + 5.0,
                mid + 5.0,
                cx - 5.0,
                mid + 5.0,
                cx + 5.0,
                mid - 5.0,
                esc(&lane.server)
            );
        }
        let _ = writeln!(svg, "</g>");
    }

    // Markers, labels staggered so neighbours do not overlap.
    for (i, m) in p.markers.iter().enumerate() {
        let mx = x(m.at);
        let ly = 40.0 + 13.0 * (i % 2) as f64;
        let anchor = if mx > WIDTH - 200.0 { "end" } else { "start" };
        let _ = writeln!(
            svg,
            r#"<g class="marker {}"><line x1="{mx:.1}" y1="{:.1}" x2="{mx:.1}" y2="{axis_y}" stroke="{}" stroke-dasharray="4 3"/><text x="{:.1}" y="{ly:.1}" text-anchor="{anchor}" fill="{}">{}</text></g>"#,
            m.kind.class(),
            ly + 3.0,
            m.kind.colour(),
            mx + if anchor == "end" { -3.0 } else { 3.0 },
            m.kind.colour(),
            esc(&m.label)
        );
    }

    // Legend.
    let ly = axis_y + 45.0;
    let _ = writeln!(
        svg,
        r##"<g class="legend" font-size="11"><rect x="10" y="{:.1}" width="20" height="10" fill="#bbb"/><text x="35" y="{ly:.1}">booting</text><rect x="100" y="{:.1}" width="20" height="10" fill="#1f77b4" fill-opacity="0.35"/><text x="125" y="{ly:.1}">non-voter</text><rect x="200" y="{:.1}" width="20" height="10" fill="#1f77b4"/><text x="225" y="{ly:.1}">voter, {}</text><rect x="330" y="{:.1}" width="20" height="10" fill="#2ca02c"/><text x="355" y="{ly:.1}">voter, {}</text><rect x="460" y="{:.1}" width="20" height="4" fill="#f2b701"/><text x="485" y="{ly:.1}">leader</text><circle cx="560" cy="{:.1}" r="4" fill="white" stroke="#333"/><text x="570" y="{ly:.1}">launched</text><path d="M640 {:.1} L645 {:.1} L650 {:.1} L645 {:.1} Z" fill="white" stroke="#333"/><text x="655" y="{ly:.1}">became voter</text><path d="M740 {:.1} L750 {:.1} M740 {:.1} L750 {:.1}" stroke="#333" stroke-width="2"/><text x="755" y="{ly:.1}">left</text></g>"##,
        ly - 9.0,
        ly - 9.0,
        ly - 9.0,
        esc(&p.old_image),
        ly - 9.0,
        esc(&p.new_image),
        ly - 6.0,
        ly - 4.0,
        ly - 4.0,
        ly - 10.0,
        ly - 4.0,
        ly + 2.0,
        ly - 9.0,
        ly + 1.0,
        ly + 1.0,
        ly - 9.0,
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ev(at: u64, server: &str, image: &str, event: &str) -> Event {
        Event {
            at,
            server: server.into(),
            image: image.into(),
            event: event.into(),
        }
    }

    /// One old leader replaced by one new server: the new one launches, votes, takes
    /// leadership; the old one leaves.
    fn one_swap() -> Vec<Event> {
        vec![
            ev(0, "s1", "a", "launched"),
            ev(0, "s1", "a", "started"),
            ev(0, "s1", "a", "joined"),
            ev(0, "s1", "a", "voter"),
            ev(0, "s1", "a", "leader"),
            ev(1_000, "s2", "b", "launched"),
            ev(1_500, "s2", "b", "started"),
            ev(1_500, "s2", "b", "joined"),
            ev(3_000, "s2", "b", "voter"),
            ev(3_500, "s1", "a", "follower"),
            ev(3_500, "s2", "b", "leader"),
            ev(3_600, "s1", "a", "left"),
            ev(3_600, "s1", "a", "terminated"),
        ]
    }

    #[test]
    fn lanes_follow_launch_order_and_carry_each_moment() {
        let lanes = lanes(&one_swap());
        assert_eq!(lanes.len(), 2);
        assert_eq!(lanes[0].server, "s1");
        assert_eq!(lanes[0].led, [(0, Some(3_500))]);
        assert_eq!(lanes[0].gone(), Some(3_600));
        assert_eq!(lanes[1].launched, Some(1_000));
        assert_eq!(lanes[1].joined, Some(1_500));
        assert_eq!(lanes[1].voter, Some(3_000));
        assert_eq!(lanes[1].led, [(3_500, None)]);
        assert_eq!(lanes[1].gone(), None);
    }

    #[test]
    fn a_killed_server_is_gone_when_killed_even_before_it_is_pruned() {
        let mut events = one_swap();
        events.push(ev(4_000, "s2", "b", "killed"));
        events.push(ev(9_000, "s2", "b", "left"));
        let lanes = lanes(&events);
        assert_eq!(lanes[1].gone(), Some(9_000));
        assert_eq!(lanes[1].killed, Some(4_000));
    }

    fn picture(events: &[Event]) -> String {
        render_svg(&Picture {
            title: "rollout <a> & b".into(),
            events,
            markers: vec![
                Marker {
                    at: 500,
                    kind: MarkerKind::Fired,
                    label: "consul-rehydrate".into(),
                },
                Marker {
                    at: 2_000,
                    kind: MarkerKind::Kill,
                    label: "SIGKILL demo-2".into(),
                },
                Marker {
                    at: 3_200,
                    kind: MarkerKind::Takeover,
                    label: "demo-3 took over".into(),
                },
            ],
            old_image: "a".into(),
            new_image: "b".into(),
            end: 4_000,
        })
    }

    #[test]
    fn the_svg_has_a_lane_per_server_with_its_marks() {
        let svg = picture(&one_swap());
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<g class=\"lane\"").count(), 2);
        assert!(svg.contains(r#"data-server="s1" data-image="a""#));
        assert!(svg.contains(r#"data-server="s2" data-image="b""#));
        assert_eq!(svg.matches("class=\"mark launched\"").count(), 2);
        assert_eq!(svg.matches("class=\"mark voter\"").count(), 2);
        assert_eq!(svg.matches("class=\"mark leader\"").count(), 2);
        assert_eq!(svg.matches("class=\"mark left\"").count(), 1);
        assert!(svg.contains("class=\"marker kill\""));
        assert!(svg.contains("class=\"marker takeover\""));
        // Text is escaped: the document stays well formed.
        assert!(svg.contains("rollout &lt;a&gt; &amp; b"));
        assert!(!svg.contains("<a>"));
    }

    #[test]
    fn positions_scale_with_time_inside_the_plot() {
        let svg = picture(&one_swap());
        // The new server launches at 1 s of a 0–4 s picture: a quarter of the plot in.
        let plot_w = WIDTH - LABEL_W - RIGHT_PAD;
        let want = format!("cx=\"{:.1}\"", LABEL_W + plot_w / 4.0);
        let s2 = svg.split("data-server=\"s2\"").nth(1).unwrap();
        assert!(s2.contains(&want), "{want} in {s2}");
        // Times count from the event: the fire marker is at +0 s, the start at -0 s or so.
        assert!(svg.contains(">+0.0 s<"), "{svg}");
    }

    #[test]
    fn tick_steps_stay_readable() {
        assert_eq!(tick_step(4_000), 500);
        assert_eq!(tick_step(30_000), 2_000);
        assert_eq!(tick_step(100_000), 10_000);
    }
}
