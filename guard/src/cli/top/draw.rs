//! Drawing a [`Frame`]: as ratatui tables laid out for the terminal's size, or as plain text for
//! `--once`.

use ratatui::{
    layout::{Constraint, Direction, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Paragraph, Row, Table},
};

use super::model::{Frame, Section};

/// At least this wide, sections sit side by side; narrower, they stack.
pub const WIDE: u16 = 100;

/// Draws `frame` (and `note`, a line about the connection) over the whole area.
pub fn draw(out: &mut ratatui::Frame<'_>, frame: &Frame, note: &str) {
    let area = out.area();
    let [top, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
    out.render_widget(
        Paragraph::new(Line::from(format!("{}  {note}", frame.header)))
            .style(Style::default().add_modifier(Modifier::BOLD)),
        top,
    );
    if area.width >= WIDE {
        let height = |sections: &[&Section]| {
            sections
                .iter()
                .map(|s| s.rows.len().max(1))
                .max()
                .unwrap_or(1) as u16
                + 3
        };
        // The keys get the widest box: with budgets metered they have seven columns.
        let first = [&frame.requests, &frame.kernel, &frame.latency];
        let second = [&frame.keys, &frame.refused];
        let [one, two, three] = Layout::vertical([
            Constraint::Length(height(&first)),
            Constraint::Length(height(&second)),
            Constraint::Min(3),
        ])
        .areas(body);
        let thirds = Layout::horizontal([
            Constraint::Percentage(35),
            Constraint::Percentage(35),
            Constraint::Percentage(30),
        ])
        .split(one);
        section(out, &frame.requests, thirds[0]);
        section(out, &frame.kernel, thirds[1]);
        section(out, &frame.latency, thirds[2]);
        let halves =
            Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).split(two);
        section(out, &frame.keys, halves[0]);
        section(out, &frame.refused, halves[1]);
        section(out, &frame.events, three);
    } else {
        let sections = frame.sections();
        let constraints: Vec<Constraint> = sections
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let rows = s.rows.len().max(1) as u16 + 3;
                if i + 1 == sections.len() {
                    Constraint::Min(3)
                } else {
                    Constraint::Length(rows)
                }
            })
            .collect();
        let areas = Layout::default()
            .direction(Direction::Vertical)
            .constraints(constraints)
            .split(body);
        for (s, area) in sections.iter().zip(areas.iter()) {
            section(out, s, *area);
        }
    }
}

fn section(out: &mut ratatui::Frame<'_>, section: &Section, area: Rect) {
    if area.height == 0 {
        return;
    }
    let block = Block::default()
        .borders(Borders::ALL)
        .title(format!(" {} ", section.title));
    if section.rows.is_empty() {
        out.render_widget(Paragraph::new(section.empty.as_str()).block(block), area);
        return;
    }
    let widths = widths(section);
    let table = Table::new(
        section.rows.iter().map(|r| Row::new(r.clone())),
        widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                // The last column takes what is left (an event's detail), cut if need be.
                if i + 1 == widths.len() {
                    Constraint::Fill(1)
                } else {
                    Constraint::Length(*w as u16)
                }
            })
            .collect::<Vec<_>>(),
    )
    .header(Row::new(section.header.clone()).style(Style::default().add_modifier(Modifier::BOLD)))
    .block(block);
    out.render_widget(table, area);
}

/// Each column as wide as its widest cell (header included).
fn widths(section: &Section) -> Vec<usize> {
    let mut widths: Vec<usize> = section.header.iter().map(|h| h.chars().count()).collect();
    for row in &section.rows {
        for (i, cell) in row.iter().enumerate() {
            let len = cell.chars().count();
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(len),
                None => widths.push(len),
            }
        }
    }
    widths
}

/// `frame` as plain text: the header, then each section as a title line and aligned columns.
pub fn text(frame: &Frame) -> String {
    let mut out = format!("{}\n", frame.header);
    for section in frame.sections() {
        out.push_str(&format!("\n{}\n", section.title));
        if section.rows.is_empty() {
            out.push_str(&format!("  {}\n", section.empty));
            continue;
        }
        let widths = widths(section);
        for row in std::iter::once(&section.header).chain(&section.rows) {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
                .collect();
            out.push_str(&format!("  {}\n", cells.join("  ").trim_end()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use ratatui::{backend::TestBackend, Terminal};

    use super::*;

    fn sample() -> Frame {
        let section = |title: &str, rows: Vec<Vec<String>>| Section {
            title: title.into(),
            header: vec!["name".into(), "total".into()],
            rows,
            empty: "none".into(),
        };
        let row = |a: &str, b: &str| vec![a.to_owned(), b.to_owned()];
        Frame {
            header: "proxyguard pid 1".into(),
            requests: section(
                "Requests",
                vec![row("allowed", "5"), row("refused bad_key", "2")],
            ),
            keys: section("Top keys", vec![row("alice", "5")]),
            refused: section("Refused clients", vec![]),
            latency: section("Upstream latency", vec![]),
            kernel: section("Kernel", vec![]),
            events: section("Security events", vec![]),
        }
    }

    fn screen(width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, &sample(), "")).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..height)
            .map(|y| (0..width).map(|x| buffer[(x, y)].symbol()).collect())
            .collect()
    }

    #[test]
    fn wide_terminals_put_sections_side_by_side_and_narrow_ones_stack_them() {
        let wide = screen(120, 40);
        assert!(wide
            .iter()
            .any(|l| l.contains("Requests") && l.contains("Kernel")));
        let narrow = screen(60, 60);
        assert!(narrow.iter().any(|l| l.contains("Requests")));
        assert!(narrow.iter().any(|l| l.contains("Kernel")));
        assert!(!narrow
            .iter()
            .any(|l| l.contains("Requests") && l.contains("Kernel")));
        assert!(narrow.iter().any(|l| l.contains("refused bad_key")));
        // Too small for everything: it still draws, cut short.
        screen(20, 5);
        // A long last column is cut, not the columns before it.
        let mut frame = sample();
        frame.events.rows = vec![vec!["10:00:01".into(), "x".repeat(300)]];
        let mut terminal = Terminal::new(TestBackend::new(60, 60)).unwrap();
        terminal.draw(|f| draw(f, &frame, "")).unwrap();
        let buffer = terminal.backend().buffer().clone();
        let shown: Vec<String> = (0..60)
            .map(|y| (0..60).map(|x| buffer[(x, y)].symbol()).collect())
            .collect();
        assert!(
            shown.iter().any(|l| l.contains("10:00:01 xxx")),
            "{shown:#?}"
        );
    }

    #[test]
    fn the_plain_frame_aligns_its_columns() {
        let text = text(&sample());
        assert!(text.contains("\nRequests\n  name             total\n  allowed          5\n  refused bad_key  2\n"), "{text}");
        assert!(text.contains("\nKernel\n  none\n"), "{text}");
    }
}
