//! Session parameters that must follow a client from one server connection
//! to the next: the ones PostgreSQL reports with ParameterStatus and a
//! client may set (at startup or with SET). Each client keeps the values it
//! wants; each server connection the values it has; on attach, a server
//! that differs gets a `SET ...` prelude whose reply the relay swallows.
//! That is also how these parameters survive a failover.

/// The tracked parameters, as PostgreSQL names them in ParameterStatus.
pub const TRACKED: [&str; 6] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
];

/// The canonical name of a tracked parameter (names are case-insensitive).
pub fn tracked(name: &str) -> Option<&'static str> {
    TRACKED
        .iter()
        .copied()
        .find(|t| t.eq_ignore_ascii_case(name))
}

/// (name, value) pairs, at most one per tracked parameter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    /// The tracked subset of `pairs` (ParameterStatus or startup parameters).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Params {
        let mut p = Params::default();
        for (k, v) in pairs {
            p.set(k, v);
        }
        p
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        let name = tracked(name)?;
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Records `name = value` if `name` is tracked.
    pub fn set(&mut self, name: &str, value: &str) {
        let Some(name) = tracked(name) else { return };
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => {
                if slot.1 != value {
                    slot.1 = value.to_owned();
                }
            }
            None => self.0.push((name, value.to_owned())),
        }
    }

    /// Names whose value in `self` (wanted) differs from `have`.
    pub fn differing(&self, have: &Params) -> Vec<&'static str> {
        self.0
            .iter()
            .filter(|(n, v)| have.get(n) != Some(v.as_str()))
            .map(|(n, _)| *n)
            .collect()
    }

    /// `SET name TO 'value'; ...` for `names`, with the wanted values.
    pub fn set_statement(&self, names: &[&'static str]) -> String {
        let mut sql = String::new();
        for n in names {
            if let Some(v) = self.get(n) {
                sql.push_str(&format!("SET {n} TO '{}';", v.replace('\'', "''")));
            }
        }
        sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_only_settable_reported_parameters_case_insensitively() {
        let mut want = Params::from_pairs([
            ("user", "app"),
            ("application_name", "it's me"),
            ("timezone", "UTC"),
        ]);
        assert_eq!(want.get("user"), None);
        assert_eq!(want.get("TimeZone"), Some("UTC"));
        let have = Params::from_pairs([
            ("application_name", ""),
            ("TimeZone", "UTC"),
            ("server_version", "15"),
        ]);
        let diff = want.differing(&have);
        assert_eq!(diff, vec!["application_name"]);
        assert_eq!(
            want.set_statement(&diff),
            "SET application_name TO 'it''s me';"
        );
        want.set("DATESTYLE", "ISO, MDY");
        assert_eq!(want.get("DateStyle"), Some("ISO, MDY"));
    }
}
