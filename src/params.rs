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

/// (name, value) pairs, at most one per tracked parameter; and the other
/// settings made for the session (`extra`: SET search_path, statement_timeout,
/// startup options...), as `pg_settings` names and shows them; and (for a
/// client) the names it ever set that `pg_settings` hides (`x.y` custom
/// settings, `role`), read back by name from then on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(&'static str, String)>, Extra, Vec<String>);

/// Session-level settings besides the reported ones, sorted by name.
pub type Extra = Vec<(String, String)>;

/// The settings a server session has set (not defaults), one per line as
/// name, 0x1f, value, 0x1e-separated; PostgreSQL's `pg_settings` shows the
/// value in the form `set_config` takes back.
pub const SESSION_SETTINGS: &str = "SELECT coalesce(string_agg(name || chr(31) || setting, chr(30) ORDER BY name), '') FROM pg_catalog.pg_settings WHERE source = 'session'";

/// The non-reported settings in a `SESSION_SETTINGS` answer (or a
/// `Params::settings_query` one), sorted, one per name. `role` is left out
/// at its default (`none`): there is nothing to restore then.
pub fn parse_session_settings(v: &str) -> Extra {
    let mut extra: Extra = v
        .split('\u{1e}')
        .filter_map(|kv| kv.split_once('\u{1f}'))
        .filter(|(k, _)| tracked(k).is_none())
        .filter(|(k, v)| !(*k == "role" && *v == "none"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    extra.sort();
    extra.dedup_by(|a, b| a.0.eq_ignore_ascii_case(&b.0));
    extra
}

/// PostgreSQL's encoding names and their aliases (its `encnames.c`), as
/// (alias cleaned like `clean_encoding_name`: ASCII alphanumerics only,
/// lowercased) -> the name the server reports.
const ENCODINGS: &[(&str, &str)] = &[
    ("abc", "WIN1258"),
    ("alt", "WIN866"),
    ("big5", "BIG5"),
    ("euccn", "EUC_CN"),
    ("eucjis2004", "EUC_JIS_2004"),
    ("eucjp", "EUC_JP"),
    ("euckr", "EUC_KR"),
    ("euctw", "EUC_TW"),
    ("gb18030", "GB18030"),
    ("gbk", "GBK"),
    ("iso88591", "LATIN1"),
    ("iso885910", "LATIN6"),
    ("iso885913", "LATIN7"),
    ("iso885914", "LATIN8"),
    ("iso885915", "LATIN9"),
    ("iso885916", "LATIN10"),
    ("iso88592", "LATIN2"),
    ("iso88593", "LATIN3"),
    ("iso88594", "LATIN4"),
    ("iso88595", "ISO_8859_5"),
    ("iso88596", "ISO_8859_6"),
    ("iso88597", "ISO_8859_7"),
    ("iso88598", "ISO_8859_8"),
    ("iso88599", "LATIN5"),
    ("johab", "JOHAB"),
    ("koi8", "KOI8R"),
    ("koi8r", "KOI8R"),
    ("koi8u", "KOI8U"),
    ("latin1", "LATIN1"),
    ("latin10", "LATIN10"),
    ("latin2", "LATIN2"),
    ("latin3", "LATIN3"),
    ("latin4", "LATIN4"),
    ("latin5", "LATIN5"),
    ("latin6", "LATIN6"),
    ("latin7", "LATIN7"),
    ("latin8", "LATIN8"),
    ("latin9", "LATIN9"),
    ("mskanji", "SJIS"),
    ("muleinternal", "MULE_INTERNAL"),
    ("shiftjis", "SJIS"),
    ("shiftjis2004", "SHIFT_JIS_2004"),
    ("sjis", "SJIS"),
    ("sqlascii", "SQL_ASCII"),
    ("tcvn", "WIN1258"),
    ("tcvn5712", "WIN1258"),
    ("uhc", "UHC"),
    ("unicode", "UTF8"),
    ("utf8", "UTF8"),
    ("vscii", "WIN1258"),
    ("win", "WIN1251"),
    ("win1250", "WIN1250"),
    ("win1251", "WIN1251"),
    ("win1252", "WIN1252"),
    ("win1253", "WIN1253"),
    ("win1254", "WIN1254"),
    ("win1255", "WIN1255"),
    ("win1256", "WIN1256"),
    ("win1257", "WIN1257"),
    ("win1258", "WIN1258"),
    ("win866", "WIN866"),
    ("win874", "WIN874"),
    ("win932", "SJIS"),
    ("win936", "GBK"),
    ("win949", "UHC"),
    ("win950", "BIG5"),
    ("windows1250", "WIN1250"),
    ("windows1251", "WIN1251"),
    ("windows1252", "WIN1252"),
    ("windows1253", "WIN1253"),
    ("windows1254", "WIN1254"),
    ("windows1255", "WIN1255"),
    ("windows1256", "WIN1256"),
    ("windows1257", "WIN1257"),
    ("windows1258", "WIN1258"),
    ("windows866", "WIN866"),
    ("windows874", "WIN874"),
    ("windows932", "SJIS"),
    ("windows936", "GBK"),
    ("windows949", "UHC"),
    ("windows950", "BIG5"),
];

/// The name PostgreSQL reports for a `client_encoding` a client asked for
/// (`utf-8` is `UTF8`, `eucjp` is `EUC_JP`), or `None` if it knows no such
/// encoding. The welcome reports what the server would, not the client's
/// spelling.
pub fn canonical_encoding(name: &str) -> Option<&'static str> {
    let clean: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    ENCODINGS
        .binary_search_by(|(alias, _)| alias.cmp(&clean.as_str()))
        .ok()
        .map(|i| ENCODINGS[i].1)
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

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
            // Both sides hold canonical names: compared directly, without
            // `get`'s case-insensitive search of the tracked names.
            .filter(|(n, v)| !have.0.iter().any(|(h, hv)| h == n && hv == v))
            .map(|(n, _)| *n)
            .collect()
    }

    /// The session-level settings besides the reported ones.
    pub fn extra(&self) -> &Extra {
        &self.1
    }

    /// Replaces the session-level settings (as read from the server).
    pub fn set_extra(&mut self, extra: Extra) {
        self.1 = extra;
    }

    /// The hidden setting names the client set (`remember_hidden`).
    pub fn hidden(&self) -> &[String] {
        &self.2
    }

    /// Names of settings `pg_settings` hides that the client has set: from
    /// now on they are read back with the others.
    pub fn remember_hidden(&mut self, names: impl IntoIterator<Item = String>) {
        for n in names {
            if !self.2.contains(&n) {
                self.2.push(n);
            }
        }
    }

    /// The query reading back this client's session settings: the ones
    /// `pg_settings` shows as set by the session, and the hidden ones it set
    /// (`current_setting(name, true)`), in `SESSION_SETTINGS`' form; one
    /// round trip either way.
    pub fn settings_query(&self) -> std::borrow::Cow<'static, str> {
        if self.2.is_empty() {
            return SESSION_SETTINGS.into();
        }
        let names: Vec<String> = self.2.iter().map(|n| quote(n)).collect();
        format!(
            "SELECT coalesce(string_agg(name || chr(31) || setting, chr(30) ORDER BY name), '') FROM \
             (SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session' \
             UNION SELECT n, pg_catalog.current_setting(n, true) FROM pg_catalog.unnest(ARRAY[{}]::text[]) AS n) s \
             WHERE setting IS NOT NULL",
            names.join(", ")
        )
        .into()
    }

    /// A startup parameter that is a setting (not a reported one).
    pub fn set_startup_extra(&mut self, name: &str, value: &str) {
        if tracked(name).is_some() {
            return self.set(name, value);
        }
        let name = name.to_ascii_lowercase();
        match self.1.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value.to_owned(),
            None => self.1.push((name, value.to_owned())),
        }
        self.1.sort();
    }

    /// SQL that makes `have`'s session-level settings equal this one's:
    /// `RESET` what `have` set and this did not, `set_config` the rest
    /// (it takes values in `pg_settings`' form, lists included). Empty
    /// when they agree.
    pub fn extra_statement(&self, have: &Params) -> String {
        let mut sql = String::new();
        for (n, _) in &have.1 {
            if !self.1.iter().any(|(m, _)| m == n) {
                sql.push_str(&format!("RESET \"{}\";", n.replace('"', "\"\"")));
            }
        }
        let mut sets = Vec::new();
        // `role` last: the other settings are made as the session's user,
        // who may set more than the role can.
        let role_last = self
            .1
            .iter()
            .filter(|(n, _)| n != "role")
            .chain(self.1.iter().filter(|(n, _)| n == "role"));
        for (n, v) in role_last {
            if !have.1.iter().any(|(m, w)| m == n && w == v) {
                sets.push(format!(
                    "pg_catalog.set_config({}, {}, false)",
                    quote(n),
                    quote(v)
                ));
            }
        }
        if !sets.is_empty() {
            sql.push_str(&format!("SELECT {};", sets.join(", ")));
        }
        sql
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
    fn encodings_are_reported_as_the_server_names_them() {
        for (asked, reported) in [
            ("utf8", "UTF8"),
            ("utf-8", "UTF8"),
            ("UTF8", "UTF8"),
            ("unicode", "UTF8"),
            ("eucjp", "EUC_JP"),
            ("EUC_JP", "EUC_JP"),
            ("latin1", "LATIN1"),
            ("ISO-8859-1", "LATIN1"),
            ("win1252", "WIN1252"),
            ("sql_ascii", "SQL_ASCII"),
        ] {
            assert_eq!(canonical_encoding(asked), Some(reported), "{asked}");
        }
        assert_eq!(canonical_encoding("klingon"), None);
        assert_eq!(canonical_encoding(""), None);
        // The table is sorted (binary search), one entry per alias.
        assert!(ENCODINGS.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn extra_settings_reset_and_set() {
        let mut want = Params::default();
        want.set_startup_extra("search_path", "a, public");
        want.set_startup_extra("TimeZone", "UTC");
        assert_eq!(
            want.get("timezone"),
            Some("UTC"),
            "a reported one stays there"
        );
        let mut have = Params::default();
        have.set_extra(parse_session_settings(
            "statement_timeout\u{1f}5000\u{1e}application_name\u{1f}x",
        ));
        assert_eq!(
            have.extra(),
            &vec![("statement_timeout".into(), "5000".into())]
        );
        assert_eq!(
            want.extra_statement(&have),
            "RESET \"statement_timeout\";SELECT pg_catalog.set_config('search_path', 'a, public', false);"
        );
        have.set_extra(want.extra().clone());
        assert_eq!(want.extra_statement(&have), "");
        assert_eq!(parse_session_settings(""), vec![]);
    }

    #[test]
    fn hidden_settings_are_read_back_by_name_and_reset_for_the_next_client() {
        let mut a = Params::default();
        assert_eq!(a.settings_query(), SESSION_SETTINGS);
        a.remember_hidden(["app.tenant".to_owned(), "role".to_owned()]);
        a.remember_hidden(["app.tenant".to_owned()]);
        let q = a.settings_query();
        assert!(q.contains("ARRAY['app.tenant', 'role']"), "{q}");
        assert!(q.contains("current_setting(n, true)"), "{q}");
        // What the server answers for client A.
        let back = parse_session_settings(
            "app.tenant\u{1f}A\u{1e}role\u{1f}alice\u{1e}search_path\u{1f}a\u{1e}app.tenant\u{1f}A",
        );
        assert_eq!(
            back,
            vec![
                ("app.tenant".into(), "A".into()),
                ("role".into(), "alice".into()),
                ("search_path".into(), "a".into()),
            ]
        );
        a.set_extra(back.clone());
        let mut server = Params::default();
        server.set_extra(back);
        // Client B wants none of it: all reset before B runs.
        let b = Params::default();
        assert_eq!(
            b.extra_statement(&server),
            "RESET \"app.tenant\";RESET \"role\";RESET \"search_path\";"
        );
        // A on a fresh server: restored, role last.
        assert_eq!(
            a.extra_statement(&Params::default()),
            "SELECT pg_catalog.set_config('app.tenant', 'A', false), pg_catalog.set_config('search_path', 'a', false), pg_catalog.set_config('role', 'alice', false);"
        );
        assert_eq!(parse_session_settings("role\u{1f}none"), vec![]);
    }

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
