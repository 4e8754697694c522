//! Result sets and replies in the console's wire format: column types with
//! PostgreSQL's OIDs, rows in text format, command tags and notices.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::response::{CommandComplete, NoticeResponse};
use pgwire::messages::Message;

/// Column types, with PostgreSQL's OIDs and sizes (PgBouncer uses int4 for
/// counts of clients and servers, int8 for totals, text for times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Type {
    Text,
    Int4,
    Int8,
    Bool,
    Float8,
    /// PgBouncer's SHOW STATS columns are numeric.
    Numeric,
}

impl Type {
    fn oid(self) -> u32 {
        match self {
            Type::Text => 25,
            Type::Int4 => 23,
            Type::Int8 => 20,
            Type::Bool => 16,
            Type::Float8 => 701,
            Type::Numeric => 1700,
        }
    }

    fn size(self) -> i16 {
        match self {
            Type::Text | Type::Numeric => -1,
            Type::Int4 => 4,
            Type::Int8 | Type::Float8 => 8,
            Type::Bool => 1,
        }
    }
}

/// A result set in text format: column names and types, then rows (`None` is NULL).
pub(crate) struct ResultSet {
    columns: Vec<(&'static str, Type)>,
    rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    pub(crate) fn new(columns: &[(&'static str, Type)]) -> ResultSet {
        ResultSet {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, row: Vec<Option<String>>) {
        debug_assert_eq!(row.len(), self.columns.len(), "row width");
        self.rows.push(row);
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        let fields = self
            .columns
            .iter()
            .map(|(name, t)| {
                FieldDescription::new((*name).to_owned(), 0, 0, t.oid(), t.size(), -1, 0)
            })
            .collect();
        RowDescription::new(fields)
            .encode(out)
            .expect("a RowDescription always encodes");
        for row in &self.rows {
            let mut data = BytesMut::new();
            for v in row {
                match v {
                    Some(s) => {
                        data.put_i32(s.len() as i32);
                        data.put_slice(s.as_bytes());
                    }
                    None => data.put_i32(-1),
                }
            }
            DataRow::new(data, row.len() as i16)
                .encode(out)
                .expect("a DataRow always encodes");
        }
        put_complete(out, "SHOW");
    }
}

/// Cell helpers: text, numbers, booleans, times.
pub(crate) fn text(s: impl Into<String>) -> Option<String> {
    Some(s.into())
}

pub(crate) fn num(n: impl ToString) -> Option<String> {
    Some(n.to_string())
}

pub(crate) fn boolean(b: bool) -> Option<String> {
    Some(if b { "t" } else { "f" }.to_owned())
}

pub(crate) fn time(t: SystemTime) -> Option<String> {
    Some(format_time(t))
}

/// `2026-11-29 19:39:02 UTC`, as PgBouncer writes its times (in UTC here).
pub(crate) fn format_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub(crate) fn put_complete(out: &mut BytesMut, tag: &str) {
    CommandComplete::new(tag.to_owned())
        .encode(out)
        .expect("a CommandComplete always encodes");
}

pub(crate) fn put_notice(out: &mut BytesMut, severity: &str, message: String) {
    NoticeResponse::new(vec![
        (b'S', severity.to_owned()),
        (b'V', severity.to_owned()),
        (
            b'C',
            if severity == "WARNING" {
                "01000"
            } else {
                "00000"
            }
            .to_owned(),
        ),
        (b'M', message),
    ])
    .encode(out)
    .expect("a NoticeResponse always encodes");
}

/// What a command answers.
pub(crate) enum Reply {
    Rows(ResultSet),
    /// A command tag, after notices (severity, message).
    Done(&'static str, Vec<(&'static str, String)>),
}

/// A command's error: SQLSTATE and message.
pub(crate) struct Failure {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

pub(crate) fn fail(code: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol;
    use std::time::Duration;

    #[test]
    fn times_format_like_pgbouncer() {
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(format_time(t), "2024-02-29 12:34:56 UTC");
    }

    #[test]
    fn result_sets_encode_rows_and_nulls() {
        let mut rs = ResultSet::new(&[("a", Type::Text), ("n", Type::Int8)]);
        rs.push(vec![text("x"), None]);
        let mut out = BytesMut::new();
        rs.encode(&mut out);
        assert_eq!(out[0], b'T');
        let (_, tlen) = protocol::header(&out).unwrap().unwrap();
        let row = &out[tlen..];
        assert_eq!(row[0], b'D');
        // Two fields: "x" (length 1), then NULL (length -1).
        assert_eq!(&row[5..7], &[0, 2]);
        assert_eq!(&row[7..12], &[0, 0, 0, 1, b'x']);
        assert_eq!(&row[12..16], &[0xff, 0xff, 0xff, 0xff]);
        let (_, rlen) = protocol::header(row).unwrap().unwrap();
        assert_eq!(row[rlen], b'C');
    }
}
