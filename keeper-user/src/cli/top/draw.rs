//! The terminal view (ratatui on crossterm): the same lines as the plain refresh, laid out to
//! fit 80×24, redrawn on each frame and key. `s` sorts the workloads (rank, state, name), `p`
//! pauses the view (frames keep coming, the screen holds still), `q` quits.

use std::{sync::mpsc, time::Duration};

use ratatui::{
    DefaultTerminal, Frame as Screen,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style, Stylize as _},
    text::Line,
    widgets::{Block, Borders, Paragraph},
};

use super::{
    Feed,
    model::{self, History, Sort},
    text,
};

/// What the keys have set.
#[derive(Default)]
struct View {
    sort: Sort,
    /// The history as it was when `p` was pressed.
    paused: Option<History>,
    /// Why the feed ended, once it has.
    ended: Option<String>,
}

/// Runs the view until `q` (or `frames` frames); returns why the feed ended, if it did.
pub fn run(feed: &mpsc::Receiver<Feed>, frames: Option<u64>) -> anyhow::Result<Option<String>> {
    let mut terminal = ratatui::try_init()?;
    let result = view(&mut terminal, feed, frames);
    ratatui::restore();
    result
}

fn view(
    terminal: &mut DefaultTerminal,
    feed: &mpsc::Receiver<Feed>,
    frames: Option<u64>,
) -> anyhow::Result<Option<String>> {
    let mut history = History::default();
    let mut v = View::default();
    let mut received = 0;
    loop {
        terminal.draw(|s| draw(s, v.paused.as_ref().unwrap_or(&history), &v))?;
        if event::poll(Duration::from_millis(200))?
            && let Event::Key(k) = event::read()?
            && k.kind == KeyEventKind::Press
        {
            match k.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(v.ended),
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                    return Ok(v.ended);
                }
                KeyCode::Char('s') => v.sort = v.sort.next(),
                KeyCode::Char('p') | KeyCode::Char(' ') => {
                    v.paused = match v.paused {
                        Some(_) => None,
                        None => Some(history.clone()),
                    }
                }
                _ => {}
            }
        }
        while let Ok(item) = feed.try_recv() {
            match item {
                Feed::Frame(f) => {
                    history.push(*f);
                    received += 1;
                }
                Feed::Ended(why) => v.ended = Some(why),
            }
        }
        if frames.is_some_and(|n| received >= n) {
            return Ok(None);
        }
    }
}

fn draw(s: &mut Screen, h: &History, v: &View) {
    let Some(f) = h.newest() else {
        let wait = v
            .ended
            .as_deref()
            .unwrap_or("waiting for the keeper's first frame");
        s.render_widget(Paragraph::new(wait), s.area());
        return;
    };
    let cores = model::cores(h);
    let noise = model::noise(h);
    let [top, cpus, noise_line, pressure, work, intr, acts, keys] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(2 * cores.len().max(1) as u16),
        Constraint::Length(u16::from(noise.is_some())),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(1),
    ])
    .areas(s.area());
    let head = vec![
        Line::from(text::header(f)).bold(),
        Line::from(text::counters(f)),
    ];
    s.render_widget(Paragraph::new(head), top);
    let core_lines: Vec<Line> = (cores.iter().flat_map(text::core_lines))
        .map(Line::from)
        .collect();
    s.render_widget(Paragraph::new(core_lines), cpus);
    if let Some((share, rows)) = &noise {
        s.render_widget(Paragraph::new(text::noise(*share, rows)), noise_line);
    }
    s.render_widget(Paragraph::new(text::pressure(f)), pressure);
    let rows = model::workloads(f, v.sort).into_iter().map(|w| {
        let line = Line::from(text::workload(w));
        if model::held(w.state) {
            line.yellow()
        } else {
            line
        }
    });
    section(s, work, text::workload_title(), rows.collect());
    let intruders = model::intruders(h);
    let rows = intruders.iter().map(|i| Line::from(text::intruder(i)));
    section(s, intr, text::intruder_title(), rows.collect());
    let rows = f.last_actions.iter().map(|a| Line::from(text::action(a)));
    section(s, acts, "Last actions".into(), rows.collect());
    s.render_widget(Paragraph::new(footer(v)).reversed(), keys);
}

/// A titled table of lines (a rule on top, the title in it).
fn section(s: &mut Screen, area: Rect, title: String, rows: Vec<Line>) {
    let block = Block::default()
        .borders(Borders::TOP)
        .title(format!("{title} "))
        .title_style(Style::new().add_modifier(Modifier::BOLD));
    s.render_widget(Paragraph::new(rows).block(block), area);
}

fn footer(v: &View) -> String {
    let state = match (&v.ended, &v.paused) {
        (Some(why), _) => format!("feed ended: {why}"),
        (None, Some(_)) => "PAUSED".to_string(),
        (None, None) => "live".to_string(),
    };
    format!(" {state} · s sort ({}) · p pause · q quit", v.sort.name())
}
