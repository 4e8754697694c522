//! `pgkeel import-pgbouncer` and `pgkeel import-haproxy`: another tool's
//! configuration turned into a commented pgkeel TOML, with every setting
//! that has a counterpart, and a list of those that have none (and why).
//! One module per format; each is a pure function from text to `Imported`.

pub mod haproxy;
pub mod pgbouncer;

/// A pgkeel configuration being written: TOML lines, with comments.
#[derive(Default)]
pub struct Imported {
    /// `[section]` → its `key = value  # comment` lines, in order.
    sections: Vec<(String, Vec<String>)>,
    /// Array tables (`[[users]]`, `[[servers]]`, `[[listeners]]`), in order.
    tables: Vec<(String, Vec<String>)>,
    /// (setting, why it has no pgkeel counterpart).
    pub unmapped: Vec<(String, String)>,
    /// Notes for the reader, at the top.
    pub notes: Vec<String>,
}

/// A TOML string literal.
pub fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

impl Imported {
    /// `key = value` (already TOML) in `[section]`, with where it came from.
    pub fn set(&mut self, section: &str, key: &str, value: String, from: &str) {
        let line = if from.is_empty() {
            format!("{key} = {value}")
        } else {
            format!("{key} = {value}  # from {from}")
        };
        match self.sections.iter_mut().find(|(s, _)| s == section) {
            Some((_, lines)) => {
                // A later setting of the same key wins, as in the source file.
                lines.retain(|l| !l.starts_with(&format!("{key} = ")));
                lines.push(line);
            }
            None => self.sections.push((section.to_owned(), vec![line])),
        }
    }

    /// One `[[table]]` entry of `key = value` lines.
    pub fn push_table(&mut self, table: &str, lines: Vec<String>) {
        self.tables.push((table.to_owned(), lines));
    }

    pub fn has_table(&self, table: &str) -> bool {
        self.tables.iter().any(|(t, _)| t == table)
    }

    pub fn skip(&mut self, setting: &str, why: &str) {
        self.unmapped.push((setting.to_owned(), why.to_owned()));
    }

    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// The configuration file, then (as comments) what was left out.
    pub fn render(&self, source: &str) -> String {
        let mut out = format!("# pgkeel configuration imported from {source}.\n");
        out.push_str("# Check it with: pgkeel --check-config <this file>\n");
        for n in &self.notes {
            out.push_str(&format!("# NOTE: {n}\n"));
        }
        for (section, lines) in &self.sections {
            out.push_str(&format!("\n[{section}]\n"));
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        }
        for (table, lines) in &self.tables {
            out.push_str(&format!("\n[[{table}]]\n"));
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        }
        if !self.unmapped.is_empty() {
            out.push_str("\n# Settings with no pgkeel counterpart, left out:\n");
            for (k, why) in &self.unmapped {
                out.push_str(&format!("#   {k}: {why}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_settings_win_and_skips_are_listed() {
        let mut i = Imported::default();
        i.set("proxy", "pool_size", "10".into(), "a");
        i.set("proxy", "pool_size", "20".into(), "b");
        i.push_table("servers", vec!["host = \"h\"".into()]);
        i.skip("logfile", "pgkeel logs to stderr");
        let out = i.render("x.ini");
        assert!(out.contains("[proxy]\npool_size = 20  # from b\n"), "{out}");
        assert!(!out.contains("pool_size = 10"));
        assert!(out.contains("[[servers]]\nhost = \"h\"\n"));
        assert!(out.contains("#   logfile: pgkeel logs to stderr"));
        let v: toml::Table = toml::from_str(&format!("x = {}", quote("a\"b'c"))).unwrap();
        assert_eq!(v["x"].as_str(), Some("a\"b'c"));
    }
}
