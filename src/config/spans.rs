//! Where each key of a TOML file is: its line and column, from the parser's spans
//! (`toml::de::DeTable`), by the key paths problems name (`api.timeout`, `sink[0].dir`,
//! `watch[3].asset_id`). Only built when there is something to place (a problem, or
//! `scenewatch config`); a large file is parsed one `[[watch]]` table at a time, as when loading.

use std::collections::HashMap;

use toml::de::{DeTable, DeValue};

use super::split::chunks;

/// The (line, column) of every key and every array-of-tables item in `text`, by key path, each
/// under `prefix` (`watch[N]` for a watch file, empty for a configuration file). Empty when the
/// text does not parse (its syntax error says where it is).
pub(super) fn key_positions(text: &str, prefix: &str) -> HashMap<String, (usize, usize)> {
    let mut out = HashMap::new();
    // How many items each array of tables had in the chunks before: `[[watch]]` tables are
    // numbered across the whole file.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (first_line, chunk) in chunks(text, super::split::CHUNKED_ABOVE_BYTES) {
        let Ok(table) = DeTable::parse(chunk) else {
            return HashMap::new();
        };
        let lines = Lines::new(chunk, first_line);
        let mut counts = HashMap::new();
        walk(
            table.get_ref(),
            prefix,
            &lines,
            &mut out,
            &seen,
            &mut counts,
        );
        for (k, n) in counts {
            *seen.entry(k).or_default() += n;
        }
    }
    out
}

/// The place of `key`, or of the nearest enclosing table or item that is in the file (a
/// missing key is placed at its table).
pub(super) fn find(index: &HashMap<String, (usize, usize)>, key: &str) -> Option<(usize, usize)> {
    let mut k = key;
    loop {
        if let Some(p) = index.get(k) {
            return Some(*p);
        }
        let cut = k.rfind(['.', '['])?;
        k = &k[..cut];
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn walk(
    table: &DeTable<'_>,
    prefix: &str,
    lines: &Lines,
    out: &mut HashMap<String, (usize, usize)>,
    seen: &HashMap<String, usize>,
    counts: &mut HashMap<String, usize>,
) {
    for (k, v) in table {
        let path = join(prefix, k.get_ref());
        out.entry(path.clone())
            .or_insert_with(|| lines.at(k.span().start));
        match v.get_ref() {
            DeValue::Table(t) => walk(t, &path, lines, out, seen, counts),
            DeValue::Array(items) => {
                let before = seen.get(&path).copied().unwrap_or(0);
                for (i, item) in items.iter().enumerate() {
                    if let DeValue::Table(t) = item.get_ref() {
                        let item_path = format!("{path}[{}]", before + i);
                        out.entry(item_path.clone())
                            .or_insert_with(|| lines.at(item.span().start));
                        walk(t, &item_path, lines, out, seen, counts);
                    }
                }
                if prefix.is_empty() {
                    counts.insert(path, items.len());
                }
            }
            _ => {}
        }
    }
}

/// Byte offsets to (line, column), both from 1, the column in characters.
struct Lines<'a> {
    text: &'a str,
    starts: Vec<usize>,
    first_line: usize,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str, first_line: usize) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            text,
            starts,
            first_line,
        }
    }

    fn at(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line];
        let column = self
            .text
            .get(start..offset)
            .map_or(0, |s| s.chars().count());
        (self.first_line + line + 1, column + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tables_and_items_are_placed_by_line_and_column() {
        let text = "state_dir = \"/x\"\n[api]\n  timeout = \"soon\"\n[[sink]]\ntype = \"file\"\n[[watch]]\nworkspace = \"w\"\n[[sink]]\ndir = \"d\"\n";
        let index = key_positions(text, "");
        assert_eq!(index["state_dir"], (1, 1));
        assert_eq!(index["api"], (2, 2));
        assert_eq!(index["api.timeout"], (3, 3));
        assert_eq!(index["sink[0].type"], (5, 1));
        assert_eq!(index["watch[0].workspace"], (7, 1));
        assert_eq!(index["sink[1].dir"], (9, 1));
        // A key that is not there is placed at its table.
        assert_eq!(find(&index, "api.secret_key"), Some((2, 2)));
        assert_eq!(find(&index, "sink[1].name"), find(&index, "sink[1]"));
        assert_eq!(find(&index, "poll.max_wait"), None);
        let watch = key_positions("asset_id = \"a\"\n", "watch[7]");
        assert_eq!(watch["watch[7].asset_id"], (1, 1));
    }

    #[test]
    fn a_large_file_numbers_its_watches_across_chunks() {
        let mut text = String::from("[api]\naccess_key = \"AK\"\n");
        let one = "[[watch]]\nworkspace = \"w\"\nproject_id = \"1\"\nasset_id = \"2\"\nindex_id = \"3\"\n";
        let n = super::super::split::CHUNKED_ABOVE_BYTES / one.len() + 10;
        for _ in 0..n {
            text.push_str(one);
        }
        let index = key_positions(&text, "");
        let last = n - 1;
        assert_eq!(
            index[&format!("watch[{last}].asset_id")],
            (2 + 5 * last + 4, 1)
        );
        assert_eq!(index["api.access_key"], (2, 1));
    }
}
