//! Reading a request body field by field with the vendor's codes (§3): a missing field is
//! `2`, a field of the wrong JSON type `3`, a value out of range `4`, an array with too many
//! elements `4001`. `null` counts as missing (listOrder documents its filters as nullable).
//! Every message names the field by its path (`callInfoList.callList[3].userPhone`).

use serde_json::{Map, Value};

use crate::auth::Refusal;

/// Parameter missing.
pub(crate) const MISSING: i64 = 2;
/// Parameter format error.
pub(crate) const FORMAT: i64 = 3;
/// Parameter value error.
pub(crate) const VALUE: i64 = 4;
/// Too many array elements.
pub(crate) const TOO_MANY: i64 = 4001;

/// The one `productID` the v3 API knows (§1).
const PRODUCT_ID: &str = "callbot";

pub(crate) type Checked<T> = Result<T, Refusal>;

/// A JSON object being read, with its path for messages.
#[derive(Clone)]
pub(crate) struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

/// Parses the body: anything but a JSON object is a format error.
pub(crate) fn body_object(value: &Value) -> Checked<Obj<'_>> {
    match value {
        Value::Object(map) => Ok(Obj { map, path: String::new() }),
        _ => Err(Refusal::new(FORMAT, "body must be a JSON object")),
    }
}

impl<'a> Obj<'a> {
    /// The dotted name of field `k`.
    pub fn name(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_owned()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    fn get(&self, k: &str) -> Option<&'a Value> {
        self.map.get(k).filter(|v| !v.is_null())
    }

    fn missing(&self, k: &str) -> Refusal {
        Refusal::new(MISSING, format!("{} is missing", self.name(k)))
    }

    fn wrong(&self, k: &str, kind: &str) -> Refusal {
        Refusal::new(FORMAT, format!("{} must be {kind}", self.name(k)))
    }

    /// A bad value of field `k`.
    pub fn bad(&self, k: &str, why: &str) -> Refusal {
        Refusal::new(VALUE, format!("{} {why}", self.name(k)))
    }

    pub fn opt_str(&self, k: &str) -> Checked<Option<&'a str>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong(k, "a string")),
        }
    }

    pub fn req_str(&self, k: &str) -> Checked<&'a str> {
        self.opt_str(k)?.ok_or_else(|| self.missing(k))
    }

    /// A required string that must not be empty (ids).
    pub fn req_id(&self, k: &str) -> Checked<&'a str> {
        let s = self.req_str(k)?;
        if s.trim().is_empty() {
            return Err(self.bad(k, "must not be empty"));
        }
        Ok(s)
    }

    pub fn opt_int(&self, k: &str) -> Checked<Option<i64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| self.wrong(k, "an integer")),
        }
    }

    pub fn req_int(&self, k: &str) -> Checked<i64> {
        self.opt_int(k)?.ok_or_else(|| self.missing(k))
    }

    pub fn opt_number(&self, k: &str) -> Checked<Option<f64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.wrong(k, "a number")),
        }
    }

    pub fn opt_bool(&self, k: &str) -> Checked<Option<bool>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong(k, "a boolean")),
        }
    }

    /// An optional nested object.
    pub fn opt_obj(&self, k: &str) -> Checked<Option<Obj<'a>>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Obj { map, path: self.name(k) })),
            Some(_) => Err(self.wrong(k, "an object")),
        }
    }

    pub fn req_obj(&self, k: &str) -> Checked<Obj<'a>> {
        self.opt_obj(k)?.ok_or_else(|| self.missing(k))
    }

    pub fn opt_array(&self, k: &str, max: usize) -> Checked<Option<&'a Vec<Value>>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Array(items)) if items.len() > max => Err(Refusal::new(
                TOO_MANY,
                format!("{} has {} elements, at most {max} allowed", self.name(k), items.len()),
            )),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(_) => Err(self.wrong(k, "an array")),
        }
    }

    pub fn req_array(&self, k: &str, max: usize) -> Checked<&'a Vec<Value>> {
        self.opt_array(k, max)?.ok_or_else(|| self.missing(k))
    }

    /// An optional array of strings.
    pub fn opt_str_list(&self, k: &str, max: usize) -> Checked<Option<Vec<&'a str>>> {
        let Some(items) = self.opt_array(k, max)? else { return Ok(None) };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| v.as_str().ok_or_else(|| self.wrong(&format!("{k}[{i}]"), "a string")))
            .collect::<Checked<Vec<_>>>()
            .map(Some)
    }

    pub fn req_str_list(&self, k: &str, max: usize) -> Checked<Vec<&'a str>> {
        self.opt_str_list(k, max)?.ok_or_else(|| self.missing(k))
    }

    /// An optional array of integers.
    pub fn opt_int_list(&self, k: &str, max: usize) -> Checked<Option<Vec<i64>>> {
        let Some(items) = self.opt_array(k, max)? else { return Ok(None) };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| v.as_i64().ok_or_else(|| self.wrong(&format!("{k}[{i}]"), "an integer")))
            .collect::<Checked<Vec<_>>>()
            .map(Some)
    }

    /// `productID`: required, the constant `"callbot"`.
    pub fn product(&self) -> Checked<()> {
        if self.req_str("productID")? != PRODUCT_ID {
            return Err(self.bad("productID", "must be \"callbot\""));
        }
        Ok(())
    }

    /// An optional callback URL: `http://` or `https://`.
    pub fn opt_url(&self, k: &str) -> Checked<Option<&'a str>> {
        let url = self.opt_str(k)?;
        match url {
            Some(u) if !(u.is_empty() || u.starts_with("http://") || u.starts_with("https://")) => {
                Err(self.bad(k, "must be an http:// or https:// URL"))
            }
            Some("") => Ok(None),
            _ => Ok(url),
        }
    }

    pub fn req_url(&self, k: &str) -> Checked<&'a str> {
        self.req_str(k)?;
        self.opt_url(k)?.ok_or_else(|| self.bad(k, "must not be empty"))
    }

    /// Element `i` of array field `k`, which must be an object.
    pub fn element(&self, k: &str, i: usize, v: &'a Value) -> Checked<Obj<'a>> {
        let path = self.name(&format!("{k}[{i}]"));
        match v {
            Value::Object(map) => Ok(Obj { map, path }),
            _ => Err(Refusal::new(FORMAT, format!("{path} must be an object"))),
        }
    }

    /// The raw map.
    pub fn map(&self) -> &'a Map<String, Value> {
        self.map
    }
}

/// `{gt, lt, enable}` range filters of listOrder/listCall: `Some((gt, lt))` when enabled.
pub(crate) fn range_filter(parent: &Obj<'_>, k: &str) -> Checked<Option<(Option<i64>, Option<i64>)>> {
    let Some(r) = parent.opt_obj(k)? else { return Ok(None) };
    let enabled = r.opt_bool("enable")?.unwrap_or(true);
    let (gt, lt) = (r.opt_int("gt")?, r.opt_int("lt")?);
    Ok(enabled.then_some((gt, lt)))
}

/// Whether `v` lies strictly inside the range.
pub(crate) fn in_range(range: Option<(Option<i64>, Option<i64>)>, v: i64) -> bool {
    match range {
        None => true,
        Some((gt, lt)) => gt.is_none_or(|g| v > g) && lt.is_none_or(|l| v < l),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_kind_of_bad_field_has_its_vendor_code_and_names_the_field() {
        let body = json!({"a": {"b": [1, "x"]}, "n": null, "s": "text"});
        let obj = body_object(&body).unwrap();
        let inner = obj.req_obj("a").unwrap();
        let e = inner.req_str_list("b", 10).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (FORMAT, "a.b[0] must be a string"));
        assert_eq!(inner.req_str_list("b", 1).unwrap_err().code, TOO_MANY);
        assert_eq!(obj.req_str("n").unwrap_err().code, MISSING, "null counts as missing");
        assert_eq!(obj.req_int("s").unwrap_err().code, FORMAT);
        assert_eq!(obj.product().unwrap_err().code, MISSING);
        assert_eq!(body_object(&json!([])).err().unwrap().code, FORMAT);
        assert!(in_range(Some((Some(1), Some(5))), 3) && !in_range(Some((Some(1), None)), 1) && in_range(None, -7));
    }
}
