//! PortSIP-style list parameters applied to a resource's JSON views:
//! `filter` (`kind eq 'phone' and dnd eq true`; operators eq, ne, gt, ge,
//! lt, le, contains, startswith; dotted paths reach nested fields),
//! `search` (case-insensitive substring over the resource's search
//! fields), `orderby` (`number desc, display_name`), `skip` and `top`
//! (1 to 100). Pure: no IO.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::IntoParams;

/// Most items one page holds.
pub const MAX_TOP: usize = 100;

/// The list parameters as they arrive in the query string.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Conditions joined by `and`: `<field> <op> <value>`, op one of eq,
    /// ne, gt, ge, lt, le, contains, startswith; values are 'quoted
    /// strings', numbers, true, false or null.
    pub filter: Option<String>,
    /// Case-insensitive text looked for in the resource's main fields.
    pub search: Option<String>,
    /// Comma-separated fields, each optionally followed by asc or desc.
    pub orderby: Option<String>,
    /// Items to leave out from the start.
    pub skip: Option<usize>,
    /// Items to return, 1 to 100 (default 100).
    pub top: Option<usize>,
}

/// A list parameter that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListError {
    pub field: &'static str,
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> ListError {
    ListError {
        field,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Contains,
    StartsWith,
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    path: Vec<String>,
    op: Op,
    value: Value,
}

/// The tokens of a filter: words, and single-quoted strings with `''`
/// standing for one quote.
fn tokenize(filter: &str) -> Result<Vec<(bool, String)>, ListError> {
    let mut tokens = Vec::new();
    let mut chars = filter.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            chars.next();
            let mut text = String::new();
            loop {
                match chars.next() {
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        text.push('\'');
                    }
                    Some('\'') => break,
                    Some(other) => text.push(other),
                    None => return Err(err("filter", "unterminated quoted string")),
                }
            }
            tokens.push((true, text));
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '\'' {
                    break;
                }
                word.push(c);
                chars.next();
            }
            tokens.push((false, word));
        }
    }
    Ok(tokens)
}

fn parse_filter(filter: &str, fields: &[&str]) -> Result<Vec<Condition>, ListError> {
    let tokens = tokenize(filter)?;
    let mut conditions = Vec::new();
    let mut rest = tokens.as_slice();
    loop {
        let [(false, field), (false, op), (quoted, value), tail @ ..] = rest else {
            return Err(err(
                "filter",
                "expected <field> <op> <value>, conditions joined by 'and'",
            ));
        };
        let path: Vec<String> = field.split('.').map(str::to_string).collect();
        if !path.first().is_some_and(|f| fields.contains(&f.as_str())) {
            return Err(err("filter", format!("unknown field '{field}'")));
        }
        let op = match op.to_ascii_lowercase().as_str() {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            "contains" => Op::Contains,
            "startswith" => Op::StartsWith,
            other => return Err(err("filter", format!("unknown operator '{other}'"))),
        };
        let value = if *quoted {
            Value::String(value.clone())
        } else {
            match value.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "null" => Value::Null,
                number => serde_json::from_str::<serde_json::Number>(number)
                    .map(Value::Number)
                    .map_err(|_| {
                        err(
                            "filter",
                            format!(
                                "'{number}' is not a quoted string, number, true, false or null"
                            ),
                        )
                    })?,
            }
        };
        conditions.push(Condition { path, op, value });
        match tail {
            [] => return Ok(conditions),
            [(false, and), more @ ..] if and.eq_ignore_ascii_case("and") => rest = more,
            _ => return Err(err("filter", "conditions must be joined by 'and'")),
        }
    }
}

fn field<'a>(item: &'a Value, path: &[String]) -> &'a Value {
    let mut current = item;
    for segment in path {
        current = current.get(segment).unwrap_or(&Value::Null);
    }
    current
}

/// Orders two JSON values of a field: numbers numerically, strings by
/// text (a numeric string against a number as a number), booleans false
/// first, null (absent) before everything.
fn compare_values(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&y.as_f64().unwrap_or(0.0)),
        (Value::String(x), Value::String(y)) => natural_cmp(x, y),
        // `number ge 100`: extension numbers are strings that people
        // compare as numbers.
        (Value::String(x), Value::Number(y)) => match x.parse::<f64>() {
            Ok(x) => x.total_cmp(&y.as_f64().unwrap_or(0.0)),
            Err(_) => x.as_str().cmp(y.to_string().as_str()),
        },
        (Value::Number(_), Value::String(_)) => compare_values(b, a).reverse(),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Digit strings compare as numbers (extension 99 before 100), others as text.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if digits(a) && digits(b) {
        let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    } else {
        a.cmp(b)
    }
}

fn holds(condition: &Condition, item: &Value) -> bool {
    let actual = field(item, &condition.path);
    let text = |v: &Value| match v {
        Value::String(s) => s.to_lowercase(),
        other => other.to_string(),
    };
    match condition.op {
        Op::Eq => actual == &condition.value || equal_loosely(actual, &condition.value),
        Op::Ne => !(actual == &condition.value || equal_loosely(actual, &condition.value)),
        Op::Gt => compare_values(actual, &condition.value) == Ordering::Greater,
        Op::Ge => compare_values(actual, &condition.value) != Ordering::Less,
        Op::Lt => compare_values(actual, &condition.value) == Ordering::Less,
        Op::Le => compare_values(actual, &condition.value) != Ordering::Greater,
        Op::Contains => text(actual).contains(&text(&condition.value)),
        Op::StartsWith => text(actual).starts_with(&text(&condition.value)),
    }
}

/// `number eq 100` matches the string "100" too: numbers are strings in
/// the API but look like numbers to people.
fn equal_loosely(actual: &Value, wanted: &Value) -> bool {
    match (actual, wanted) {
        (Value::String(s), Value::Number(n)) => s == &n.to_string(),
        (Value::Number(n), Value::String(s)) => s == &n.to_string(),
        _ => false,
    }
}

fn parse_orderby(orderby: &str, fields: &[&str]) -> Result<Vec<(Vec<String>, bool)>, ListError> {
    orderby
        .split(',')
        .map(|part| {
            let mut words = part.split_whitespace();
            let name = words
                .next()
                .ok_or_else(|| err("orderby", "empty sort key"))?;
            let path: Vec<String> = name.split('.').map(str::to_string).collect();
            if !path.first().is_some_and(|f| fields.contains(&f.as_str())) {
                return Err(err("orderby", format!("unknown field '{name}'")));
            }
            let descending = match words.next().map(str::to_ascii_lowercase).as_deref() {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(other) => return Err(err("orderby", format!("'{other}' is not asc or desc"))),
            };
            if words.next().is_some() {
                return Err(err("orderby", "use commas between sort keys"));
            }
            Ok((path, descending))
        })
        .collect()
}

/// A resource's list behaviour: which fields filter and orderby may
/// name, which ones `search` looks in, and the default order.
pub struct Listing<'a> {
    pub fields: &'a [&'a str],
    pub search_fields: &'a [&'a str],
    pub default_order: &'a str,
}

/// One page of a list and how many items matched in all.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub count: usize,
}

impl Listing<'_> {
    /// Filters, searches, orders and pages `items` by their JSON form.
    /// Every parameter is checked before the items are looked at, so a bad
    /// one is reported whatever the data.
    pub fn apply<T: Serialize>(
        &self,
        params: &ListParams,
        items: Vec<T>,
    ) -> Result<Page<T>, ListError> {
        let top = params.top.unwrap_or(MAX_TOP);
        if top == 0 || top > MAX_TOP {
            return Err(err("top", format!("must be between 1 and {MAX_TOP}")));
        }
        let conditions = match params.filter.as_deref().map(str::trim) {
            None | Some("") => Vec::new(),
            Some(filter) => parse_filter(filter, self.fields)?,
        };
        let order = parse_orderby(
            params.orderby.as_deref().unwrap_or(self.default_order),
            self.fields,
        )?;
        let search = params
            .search
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_lowercase);
        let views: Vec<Value> = items
            .iter()
            .map(|item| serde_json::to_value(item).unwrap_or(Value::Null))
            .collect();
        let mut matched: Vec<usize> = (0..views.len())
            .filter(|&i| conditions.iter().all(|c| holds(c, &views[i])))
            .filter(|&i| match &search {
                None => true,
                Some(needle) => self.search_fields.iter().any(|f| {
                    views[i]
                        .get(*f)
                        .and_then(Value::as_str)
                        .is_some_and(|v| v.to_lowercase().contains(needle))
                }),
            })
            .collect();
        matched.sort_by(|&a, &b| {
            order
                .iter()
                .map(|(path, descending)| {
                    let o = compare_values(field(&views[a], path), field(&views[b], path));
                    if *descending {
                        o.reverse()
                    } else {
                        o
                    }
                })
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        });
        let count = matched.len();
        let page: Vec<usize> = matched
            .into_iter()
            .skip(params.skip.unwrap_or(0))
            .take(top)
            .collect();
        let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
        let items = page.into_iter().filter_map(|i| slots[i].take()).collect();
        Ok(Page { items, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LISTING: Listing<'static> = Listing {
        fields: &["number", "display_name", "kind", "dnd", "forwarding"],
        search_fields: &["number", "display_name"],
        default_order: "number",
    };

    fn items() -> Vec<Value> {
        vec![
            json!({"number": "100", "display_name": "Alice O'Hara", "kind": "phone", "dnd": false,
                   "forwarding": {"busy": {"enabled": true}}}),
            json!({"number": "99", "display_name": "Bob", "kind": "custom", "dnd": true,
                   "forwarding": {"busy": {"enabled": false}}}),
            json!({"number": "1000", "display_name": "Carol", "kind": "phone", "dnd": true,
                   "forwarding": {"busy": {"enabled": false}}}),
        ]
    }

    fn numbers(page: &Page<Value>) -> Vec<&str> {
        page.items
            .iter()
            .map(|i| i["number"].as_str().unwrap_or("?"))
            .collect()
    }

    fn params(filter: Option<&str>, orderby: Option<&str>) -> ListParams {
        ListParams {
            filter: filter.map(str::to_string),
            orderby: orderby.map(str::to_string),
            ..ListParams::default()
        }
    }

    #[test]
    fn numbers_sort_numerically_and_desc_reverses() {
        let page = LISTING.apply(&params(None, None), items()).expect("list");
        assert_eq!(numbers(&page), ["99", "100", "1000"]);
        let page = LISTING
            .apply(&params(None, Some("dnd desc, number")), items())
            .expect("list");
        assert_eq!(numbers(&page), ["99", "1000", "100"]);
    }

    #[test]
    fn filters_combine_with_and_and_reach_nested_fields() {
        let page = LISTING
            .apply(
                &params(Some("kind eq 'phone' and dnd eq true"), None),
                items(),
            )
            .expect("list");
        assert_eq!(numbers(&page), ["1000"]);
        let page = LISTING
            .apply(
                &params(Some("forwarding.busy.enabled eq true"), None),
                items(),
            )
            .expect("list");
        assert_eq!(numbers(&page), ["100"]);
        let page = LISTING
            .apply(&params(Some("display_name contains 'o''h'"), None), items())
            .expect("list");
        assert_eq!(numbers(&page), ["100"]);
        let page = LISTING
            .apply(&params(Some("number ge 100"), None), items())
            .expect("list");
        assert_eq!(page.count, 2);
        let page = LISTING
            .apply(&params(Some("number eq 99"), None), items())
            .expect("list");
        assert_eq!(numbers(&page), ["99"]);
    }

    #[test]
    fn search_skip_and_top_page_through_the_matches() {
        let p = ListParams {
            search: Some("o".into()),
            skip: Some(1),
            top: Some(1),
            ..ListParams::default()
        };
        let page = LISTING.apply(&p, items()).expect("list");
        // Alice O'Hara, Bob and Carol all contain an o; the second is 100.
        assert_eq!(page.count, 3);
        assert_eq!(numbers(&page), ["100"]);
    }

    #[test]
    fn bad_parameters_name_themselves() {
        for (p, field) in [
            (params(Some("password eq 'x'"), None), "filter"),
            (params(Some("number eq"), None), "filter"),
            (params(Some("number like 'x'"), None), "filter"),
            (params(Some("number eq 'x' or dnd eq true"), None), "filter"),
            (params(Some("number eq 'x"), None), "filter"),
            (params(Some("number eq abc"), None), "filter"),
            (params(None, Some("secret")), "orderby"),
            (params(None, Some("number sideways")), "orderby"),
            (
                ListParams {
                    top: Some(101),
                    ..ListParams::default()
                },
                "top",
            ),
            (
                ListParams {
                    top: Some(0),
                    ..ListParams::default()
                },
                "top",
            ),
        ] {
            let e = LISTING.apply(&p, items()).expect_err("refused");
            assert_eq!(e.field, field, "{p:?}: {}", e.message);
        }
    }
}
