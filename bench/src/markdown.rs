//! The tables of BENCHMARKS.md: GitHub markdown pipe tables drawn by
//! comfy-table, every column padded to its widest cell so that they read
//! in the file as well as rendered. comfy-table's markdown preset has no
//! alignment markers, so columns of figures get theirs (`---:`) here.
use std::fmt;

use comfy_table::{CellAlignment, presets::ASCII_MARKDOWN};

/// How a column's cells line up: text left, figures right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table being filled; its `Display` is the markdown, ending in a
/// newline.
pub struct Table {
    table: comfy_table::Table,
    align: Vec<Align>,
}

impl Table {
    /// A table with these column headings, each aligned as it says.
    pub fn new(columns: &[(&str, Align)]) -> Self {
        let mut table = comfy_table::Table::new();
        table
            .load_preset(ASCII_MARKDOWN)
            .set_header(columns.iter().map(|(h, _)| escape(h)));
        for (column, (_, align)) in table.column_iter_mut().zip(columns) {
            column.set_cell_alignment(match align {
                Align::Left => CellAlignment::Left,
                Align::Right => CellAlignment::Right,
            });
        }
        Self {
            table,
            align: columns.iter().map(|(_, a)| *a).collect(),
        }
    }

    /// One row, a cell per column.
    pub fn row<C: ToString>(&mut self, cells: impl IntoIterator<Item = C>) -> &mut Self {
        self.table
            .add_row(cells.into_iter().map(|c| escape(&c.to_string())));
        self
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.table.lines().enumerate() {
            // The second line separates the header from the rows.
            if i == 1 {
                writeln!(f, "{}", self.marked(&line))?;
            } else {
                writeln!(f, "{line}")?;
            }
        }
        Ok(())
    }
}

impl Table {
    /// "|------|------|" with a right-aligned column's dashes ending in ':'.
    fn marked(&self, separator: &str) -> String {
        let parts: Vec<&str> = separator.split('|').collect();
        let last = parts.len().saturating_sub(1);
        parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                // parts[0] and parts[last] are outside the borders.
                let right = i > 0 && i < last && self.align.get(i - 1) == Some(&Align::Right);
                match part.strip_suffix('-') {
                    Some(dashes) if right => format!("{dashes}:"),
                    _ => part.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join("|")
    }
}

/// A cell's text with its pipes escaped (a bare one would end the cell)
/// and its line breaks made spaces (a table row is one line).
fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// `text` with its tables as they would be written by hand, unpadded
/// ("| a | b |", "|---|---:|"): what a test compares, whatever the
/// columns' widths.
#[cfg(test)]
pub fn unpadded(text: &str) -> String {
    let separator = |c: &str| !c.is_empty() && c.chars().all(|ch| ch == '-' || ch == ':');
    let row = |cells: &str| {
        let cells: Vec<&str> = cells.split('|').map(str::trim).collect();
        if cells.iter().all(|c| separator(c)) {
            let marks: Vec<&str> = cells
                .iter()
                .map(|c| if c.ends_with(':') { "---:" } else { "---" })
                .collect();
            format!("|{}|", marks.join("|"))
        } else {
            format!("| {} |", cells.join(" | "))
        }
    };
    text.lines()
        .map(|l| {
            l.strip_prefix('|')
                .and_then(|l| l.strip_suffix('|'))
                .map_or_else(|| l.to_string(), row)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_columns_and_marks_right_aligned_ones() {
        let mut t = Table::new(&[("scenario", Align::Left), ("req/s", Align::Right)]);
        t.row(["direct", "101,235"]).row(["knit VIP", "99"]);
        assert_eq!(
            t.to_string(),
            "| scenario |   req/s |\n\
             |----------|--------:|\n\
             | direct   | 101,235 |\n\
             | knit VIP |      99 |\n"
        );
    }

    #[test]
    fn wide_characters_and_pipes() {
        let mut t = Table::new(&[("a", Align::Right), ("b", Align::Left)]);
        t.row(["612 µs", "x | y"]);
        assert_eq!(
            t.to_string(),
            "|      a | b      |\n\
             |-------:|--------|\n\
             | 612 µs | x \\| y |\n"
        );
    }

    #[test]
    fn unpadded_rows() {
        let mut t = Table::new(&[("a", Align::Left), ("bb", Align::Right)]);
        t.row(["long cell", "1"]);
        assert_eq!(
            unpadded(&format!("text\n\n{t}")),
            "text\n\n| a | bb |\n|---|---:|\n| long cell | 1 |"
        );
    }

    #[test]
    fn a_table_without_rows_has_its_header() {
        let t = Table::new(&[("window", Align::Left), ("CPU", Align::Right)]);
        assert_eq!(t.to_string(), "| window | CPU |\n|--------|----:|\n");
    }
}
