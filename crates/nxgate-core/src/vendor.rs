//! NXCloud's own answer codes: failures arrive inside an HTTP 200 as a top-level `code`
//! (ping) or `retCode` (every other v3 endpoint). The vendor's table, and a reader that
//! finds the code in a JSON body without parsing the rest of it (an export can be
//! megabytes; the gateway only needs one integer).

/// What kind of answer a code is, for logs, metrics and back-pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeClass {
    /// `0`.
    Success,
    /// The request itself was wrong (`1`-`4`, `4001`, `1001`).
    Request,
    /// The credential was refused (`6`, `6001`, `6002`, `6003`): the operator's business.
    Credential,
    /// The account is busy (`7`): back off.
    Busy,
    /// The service is down or failing (`5`, `5001`).
    Unavailable,
    /// Not in the vendor's table.
    Unknown,
}

/// One row of the vendor's response-code table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VendorCode {
    /// The number in `code` / `retCode`.
    pub code: i64,
    /// The vendor's meaning, in words an operator reads in a log line.
    pub meaning: &'static str,
    /// Its class.
    pub class: CodeClass,
}

/// The vendor's table, in its order (the `createAndCall`, `importBatchCall`,
/// `exportBatchCall` and `listCall` pages carry it).
pub const TABLE: [VendorCode; 14] = [
    VendorCode { code: 0, meaning: "success", class: CodeClass::Success },
    VendorCode { code: 1, meaning: "general error", class: CodeClass::Request },
    VendorCode { code: 2, meaning: "parameter missing", class: CodeClass::Request },
    VendorCode { code: 3, meaning: "parameter format error", class: CodeClass::Request },
    VendorCode { code: 4, meaning: "parameter value error", class: CodeClass::Request },
    VendorCode { code: 4001, meaning: "too many array elements", class: CodeClass::Request },
    VendorCode { code: 5, meaning: "server under maintenance", class: CodeClass::Unavailable },
    VendorCode { code: 5001, meaning: "internal server error", class: CodeClass::Unavailable },
    VendorCode { code: 6, meaning: "signature incorrect: check the tenant's secret", class: CodeClass::Credential },
    VendorCode {
        code: 6001,
        meaning: "signature missing: the request reached NXCloud without signature headers",
        class: CodeClass::Credential,
    },
    VendorCode { code: 6002, meaning: "account does not exist: check the tenant's uuid", class: CodeClass::Credential },
    VendorCode {
        code: 6003,
        meaning: "no permission: the account may not use this endpoint",
        class: CodeClass::Credential,
    },
    VendorCode { code: 7, meaning: "system busy", class: CodeClass::Busy },
    VendorCode { code: 1001, meaning: "a batch import is in progress", class: CodeClass::Request },
];

/// The table row for `code`, if the vendor documents it.
pub fn lookup(code: i64) -> Option<&'static VendorCode> {
    TABLE.iter().find(|c| c.code == code)
}

/// The class of `code` (`Unknown` outside the table).
pub fn class(code: i64) -> CodeClass {
    lookup(code).map_or(CodeClass::Unknown, |c| c.class)
}

/// The bounded metric label for `code`: the number for documented codes, `other` else.
pub fn label(code: Option<i64>) -> &'static str {
    const LABELS: [&str; 14] = ["0", "1", "2", "3", "4", "4001", "5", "5001", "6", "6001", "6002", "6003", "7", "1001"];
    match code.and_then(|c| TABLE.iter().position(|row| row.code == c)) {
        Some(i) => LABELS[i],
        None => "other",
    }
}

/// Where `label(code)` stands in [`all_labels`]: the table's rows in order, then `other`.
pub fn label_index(code: Option<i64>) -> usize {
    code.and_then(|c| TABLE.iter().position(|row| row.code == c)).unwrap_or(TABLE.len())
}

/// Every label `label` can return, for exporting each series at zero.
pub fn all_labels() -> impl Iterator<Item = &'static str> {
    (0..TABLE.len()).map(|i| label(Some(TABLE[i].code))).chain(std::iter::once("other"))
}

/// The top-level `code` or `retCode` of a JSON object body, whichever comes first, if it
/// is an integer. Reads only as far as that key: nested objects, arrays and strings are
/// skipped without being parsed, so a key named `code` inside `data` is never taken, and
/// the cost is one pass over the bytes before the key at most. Anything that is not a
/// JSON object (or is cut off before the key) gives `None`.
pub fn read_code(body: &[u8]) -> Option<i64> {
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(body, i);
        match body.get(i)? {
            b'}' => return None,
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = string_end(body, i + 1)?;
        let key = &body[i + 1..key_end];
        i = skip_ws(body, key_end + 1);
        if body.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(body, i + 1);
        if key == b"code" || key == b"retCode" {
            return integer(body, i);
        }
        i = value_end(body, i)?;
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
        i += 1;
    }
    i
}

/// Index of the closing quote of a string whose content starts at `i`.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i += memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        if b[i] == b'"' {
            return Some(i);
        }
        i += 2; // an escape and the byte it escapes
    }
}

/// Index just past the value starting at `i` (a string, object, array or scalar).
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i + 1).map(|e| e + 1),
        b'{' | b'[' => {
            // One pass: strings are jumped over (memchr), brackets counted, all else skipped.
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *b.get(j)? {
                    b'"' => j = string_end(b, j + 1)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let rest = b.get(i..)?;
            Some(i + rest.iter().position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n'))?)
        }
    }
}

fn integer(b: &[u8], i: usize) -> Option<i64> {
    let rest = b.get(i..)?;
    let len = rest.iter().position(|c| !(c.is_ascii_digit() || *c == b'-')).unwrap_or(rest.len());
    let end = rest.get(len).copied();
    // `1.5` or `1e3` is not an integer code; neither is a number cut off by the body's end
    // (it could be the start of a longer one).
    if len == 0 || !matches!(end, Some(b',' | b'}' | b' ' | b'\t' | b'\r' | b'\n')) {
        return None;
    }
    std::str::from_utf8(&rest[..len]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_index_points_at_the_label_in_all_labels() {
        let labels: Vec<_> = all_labels().collect();
        for code in [Some(0), Some(6), Some(1001), Some(99), None] {
            assert_eq!(labels[label_index(code)], label(code), "{code:?}");
        }
    }

    #[test]
    fn finds_the_top_level_code_of_either_envelope() {
        assert_eq!(read_code(br#"{"code":0,"msg":"success","reqId":"r","timestamp":1,"data":"x"}"#), Some(0));
        assert_eq!(read_code(br#"{"retMsg":"no","retCode":6003,"responseID":"r"}"#), Some(6003));
        assert_eq!(read_code(b" {\n \"retCode\" : -1 }"), Some(-1));
    }

    #[test]
    fn nested_and_quoted_codes_are_not_taken() {
        let body = br#"{"data":{"code":6,"list":[{"retCode":7},"{\"code\":5}"]},"note":"\"code\":1","retCode":4001}"#;
        assert_eq!(read_code(body), Some(4001));
        assert_eq!(read_code(br#"{"data":[1,2,{"code":7}]}"#), None);
    }

    #[test]
    fn non_integers_and_broken_bodies_give_none() {
        for body in [
            &br#"{"code":"6"}"#[..],
            br#"{"code":1.5}"#,
            br#"{"code":1e3}"#,
            br#"{"code":12"#,
            br#"{"code":"#,
            br#"["code",6]"#,
            b"",
            b"not json",
            br#"{"data":"unterminated"#,
            br#"{"data":{"open":["#,
            br#"{"retCode":99999999999999999999}"#,
        ] {
            assert_eq!(read_code(body), None, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn the_code_after_a_large_value_is_found() {
        let mut body = br#"{"retMsg":"ok","data":{"rows":["#.to_vec();
        for n in 0..20_000 {
            body.extend_from_slice(format!(r#"{{"phone":"+86138{n:08}","code":{n}}},"#).as_bytes());
        }
        body.extend_from_slice(br#""end"]},"retCode":1001}"#);
        assert_eq!(read_code(&body), Some(1001));
    }

    #[test]
    fn the_table_classes_and_labels() {
        assert_eq!(class(6), CodeClass::Credential);
        assert_eq!(class(6003), CodeClass::Credential);
        assert_eq!(class(7), CodeClass::Busy);
        assert_eq!(class(5), CodeClass::Unavailable);
        assert_eq!(class(0), CodeClass::Success);
        assert_eq!(class(42), CodeClass::Unknown);
        assert_eq!(label(Some(6001)), "6001");
        assert_eq!(label(Some(42)), "other");
        assert_eq!(label(None), "other");
        let labels: Vec<_> = all_labels().collect();
        assert_eq!(labels.len(), 15);
        for row in TABLE {
            assert_eq!(row.code.to_string(), label(Some(row.code)));
        }
        assert!(lookup(6).unwrap().meaning.contains("check the tenant's secret"));
    }
}
