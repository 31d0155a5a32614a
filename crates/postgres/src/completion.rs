//! What the target answered to each forwarded statement, for the audit: the command tag and
//! its row count, the target's error, and the Bind parameters an execution ran with, as
//! text (binary parameters of known types decoded, other binary ones described, never
//! copied raw). The gate masks the text before it is recorded.

use std::time::Duration;

use bytes::Bytes;

/// What the target answered to one forwarded statement (one statement of a simple Query,
/// or one Execute).
#[derive(Debug, Default, PartialEq)]
pub struct Outcome<'a> {
    /// From forwarding to the answer (within a query string of several statements: from the
    /// previous statement's answer).
    pub duration: Duration,
    /// The command tag, e.g. `SELECT 3`; `None` after an error, for an empty query and for
    /// a suspended portal.
    pub command_tag: Option<&'a str>,
    /// Rows returned or affected: from the tag, or counted for a suspended portal.
    pub rows: Option<u64>,
    /// The target's ErrorResponse: SQLSTATE and message as the target sent them (not yet
    /// scrubbed: the gate scrubs them for the audit).
    pub error: Option<TargetError<'a>>,
    /// Bind parameters as text (not yet masked: the gate masks them); empty for a simple
    /// Query.
    pub parameters: Vec<Option<String>>,
    /// The execution stopped at the client's row limit (PortalSuspended).
    pub suspended: bool,
}

/// SQLSTATE and primary message of a target's ErrorResponse.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TargetError<'a> {
    /// SQLSTATE.
    pub code: &'a str,
    /// Primary message.
    pub message: &'a str,
}

/// Commands whose tag ends with a row count (`INSERT oid rows` ends with it too).
const COUNTED: [&str; 8] = ["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "FETCH", "MOVE"];

/// The tag of a CommandComplete message (its NUL-terminated body).
pub(crate) fn command_tag(message: &[u8]) -> Option<&str> {
    let body = message.get(5..)?;
    let body = body.strip_suffix(b"\0").unwrap_or(body);
    std::str::from_utf8(body).ok()
}

/// Rows returned or affected, from a command tag.
pub(crate) fn tag_rows(tag: &str) -> Option<u64> {
    let (command, rest) = tag.split_once(' ')?;
    if !COUNTED.contains(&command) {
        return None;
    }
    rest.rsplit(' ').next()?.parse().ok()
}

/// SQLSTATE and message fields of an ErrorResponse.
pub(crate) fn error_fields(message: &[u8]) -> TargetError<'_> {
    let mut error = TargetError::default();
    let mut rest = message.get(5..).unwrap_or_default();
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let Some(end) = tail.iter().position(|&b| b == 0) else {
            break;
        };
        let value = std::str::from_utf8(&tail[..end]).unwrap_or("<not UTF-8>");
        match code {
            b'C' => error.code = value,
            b'M' => error.message = value,
            _ => {}
        }
        rest = &tail[end + 1..];
    }
    error
}

/// Binary parameters longer than this are described, not decoded.
const MAX_DECODED: usize = 64 * 1024;

/// Bind parameters as text: text-format ones as they are (UTF-8, lossily), binary ones
/// decoded where the parameter's type is known (from Parse or the target's
/// ParameterDescription) and its binary form is simple; otherwise `<binary, N bytes>`.
pub(crate) fn parameters(values: &[Option<Bytes>], formats: &[i16], types: &[u32]) -> Vec<Option<String>> {
    values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let value = value.as_ref()?;
            let format = match formats.len() {
                0 => 0,
                1 => formats[0],
                _ => formats.get(i).copied().unwrap_or(0),
            };
            Some(if format == 0 {
                String::from_utf8_lossy(value).into_owned()
            } else {
                binary_text(types.get(i).copied().unwrap_or(0), value)
                    .unwrap_or_else(|| format!("<binary, {} bytes>", value.len()))
            })
        })
        .collect()
}

/// The text of a binary value of a type whose binary form is known.
fn binary_text(oid: u32, v: &[u8]) -> Option<String> {
    if v.len() > MAX_DECODED {
        return None;
    }
    Some(match oid {
        // bool
        16 => match v {
            [0] => "f".to_owned(),
            [1] => "t".to_owned(),
            _ => return None,
        },
        // int2, int4, int8
        21 => i16::from_be_bytes(v.try_into().ok()?).to_string(),
        23 => i32::from_be_bytes(v.try_into().ok()?).to_string(),
        20 => i64::from_be_bytes(v.try_into().ok()?).to_string(),
        // oid
        26 => u32::from_be_bytes(v.try_into().ok()?).to_string(),
        // float4, float8
        700 => f32::from_be_bytes(v.try_into().ok()?).to_string(),
        701 => f64::from_be_bytes(v.try_into().ok()?).to_string(),
        // text, varchar, bpchar, name, unknown, json: the binary form is the text.
        25 | 1043 | 1042 | 19 | 705 | 114 => std::str::from_utf8(v).ok()?.to_owned(),
        // jsonb: a version byte, then the JSON text.
        3802 => match v.split_first() {
            Some((1, json)) => std::str::from_utf8(json).ok()?.to_owned(),
            _ => return None,
        },
        // uuid
        2950 if v.len() == 16 => {
            let h = hex::encode(v);
            format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
        }
        _ => return None,
    })
}

/// Type OIDs of a ParameterDescription message.
pub(crate) fn parameter_types(message: &[u8]) -> Vec<u32> {
    let Some(body) = message.get(5..) else {
        return Vec::new();
    };
    let Some(count) = body.get(..2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) else {
        return Vec::new();
    };
    body[2..]
        .chunks_exact(4)
        .take(count)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_from_counted_tags_only() {
        assert_eq!(tag_rows("SELECT 3"), Some(3));
        assert_eq!(tag_rows("INSERT 0 1"), Some(1));
        assert_eq!(tag_rows("UPDATE 5"), Some(5));
        assert_eq!(tag_rows("COPY 1000"), Some(1000));
        assert_eq!(tag_rows("CREATE TABLE"), None);
        assert_eq!(tag_rows("BEGIN"), None);
        assert_eq!(command_tag(b"C\0\0\0\x0dSELECT 3\0"), Some("SELECT 3"));
    }

    #[test]
    fn error_fields_are_found() {
        let msg = b"E\0\0\0\0SERROR\0C23505\0Mduplicate key\0Dsecret\0\0";
        let e = error_fields(msg);
        assert_eq!((e.code, e.message), ("23505", "duplicate key"));
    }

    #[test]
    fn binary_parameters_are_decoded_by_type_or_described() {
        let values = [
            Some(Bytes::from_static(&[0, 0, 0, 7])),
            Some(Bytes::from_static(b"a@b.example")),
            None,
            Some(Bytes::from_static(&[1, 2, 3])),
            Some(Bytes::from_static(&[0, 0, 0, 0, 0, 0, 1, 0])),
            Some(Bytes::from_static(&[1])),
            Some(Bytes::from_static(&[0x3f, 0xf8, 0, 0, 0, 0, 0, 0])),
        ];
        let out = parameters(&values, &[1], &[23, 25, 23, 17, 20, 16, 701]);
        let want: Vec<Option<String>> = [
            Some("7"),
            Some("a@b.example"),
            None,
            Some("<binary, 3 bytes>"),
            Some("256"),
            Some("t"),
            Some("1.5"),
        ]
        .into_iter()
        .map(|v| v.map(str::to_owned))
        .collect();
        assert_eq!(out, want);
        // A wrong length for the type, or no known type: described, not decoded.
        let odd = [Some(Bytes::from_static(&[0, 7])), Some(Bytes::from_static(&[9]))];
        assert_eq!(
            parameters(&odd, &[1, 1], &[23]),
            [
                Some("<binary, 2 bytes>".to_owned()),
                Some("<binary, 1 bytes>".to_owned())
            ]
        );
        // Text format: as sent.
        assert_eq!(
            parameters(&[Some(Bytes::from_static(b"42"))], &[], &[]),
            [Some("42".to_owned())]
        );
        assert_eq!(parameter_types(b"t\0\0\0\x0e\0\x02\0\0\0\x17\0\0\0\x19"), [23, 25]);
    }
}
