//! What each operation of the OpenAPI document takes and gives, read off its handler's own
//! types: every argument (an extractor) says what it reads from the request and how it refuses
//! (a JSON body, query parameters, a form), and the answer type says what the handler answers
//! (a JSON type, HTML, plain text) and in what media its errors come. The route table
//! (`crate::route`) keeps, per route, the function that describes its handler, so the document
//! cannot describe a body the handler does not read. Schemas are JSON Schema 2020-12 (what
//! OpenAPI 3.1 uses), made by `schemars` from the same types serde reads and writes.
//!
//! Neither face is imported here: the API and the dashboard implement [`DescribeArg`] and
//! [`DescribeAnswer`] for their own extractors and answers; axum's own extractors are
//! described here, with the plain-text refusals axum gives.

use std::collections::BTreeMap;
use std::future::Future;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

/// `application/json`.
pub const JSON: &str = "application/json";
/// `application/x-www-form-urlencoded`.
pub const FORM: &str = "application/x-www-form-urlencoded";
/// `text/plain`.
pub const TEXT: &str = "text/plain";
/// `text/html`.
pub const HTML: &str = "text/html";

/// Where the schemas of the document's components are referred to.
const COMPONENTS: &str = "/components/schemas";

/// The schemas of one document: requests are described as their types deserialize
/// (`#[serde(default)]` fields optional), answers as they serialize; both end up in
/// `components/schemas`, a name that means two different things getting an `Input` twin.
pub struct Schemas {
    input: SchemaGenerator,
    output: SchemaGenerator,
}

impl Default for Schemas {
    fn default() -> Self {
        let settings = || {
            SchemaSettings::draft2020_12().with(|s| {
                s.definitions_path = COMPONENTS.into();
                s.meta_schema = None;
            })
        };
        Schemas {
            input: settings().for_deserialize().into_generator(),
            output: settings().for_serialize().into_generator(),
        }
    }
}

impl Schemas {
    /// The schema (or a `$ref` to it) of `T` as a request carries it.
    pub fn input<T: JsonSchema>(&mut self) -> Value {
        self.input.subschema_for::<T>().to_value()
    }

    /// The schema (or a `$ref` to it) of `T` as an answer carries it.
    pub fn output<T: JsonSchema>(&mut self) -> Value {
        self.output.subschema_for::<T>().to_value()
    }

    /// The `components/schemas` map, and the names of input schemas renamed (`X` → `XInput`)
    /// because an output schema of the same name differs; `$ref`s to those in request parts
    /// are to be rewritten with [`rename_refs`].
    pub fn finish(mut self) -> (Map<String, Value>, BTreeMap<String, String>) {
        let mut out = self.output.take_definitions(true);
        let input = self.input.take_definitions(true);
        let renamed: BTreeMap<String, String> = input
            .iter()
            .filter(|(name, schema)| out.get(*name).is_some_and(|o| o != *schema))
            .map(|(name, _)| (name.clone(), format!("{name}Input")))
            .collect();
        for (name, mut schema) in input {
            rename_refs(&mut schema, &renamed);
            let name = renamed.get(&name).cloned().unwrap_or(name);
            out.entry(name).or_insert(schema);
        }
        (out, renamed)
    }
}

/// Rewrites `$ref`s to renamed components inside `v`.
pub fn rename_refs(v: &mut Value, renamed: &BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                if let Some(name) = r.strip_prefix(&format!("#{COMPONENTS}/")) {
                    if let Some(new) = renamed.get(name) {
                        *r = format!("#{COMPONENTS}/{new}");
                    }
                }
            }
            m.values_mut().for_each(|v| rename_refs(v, renamed));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| rename_refs(v, renamed)),
        _ => {}
    }
}

/// What one operation answers with one status.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// For people.
    pub description: String,
    /// Media type → schema; empty for an answer without a body (a redirect).
    pub content: BTreeMap<&'static str, Value>,
    /// Response headers: name → (description, schema).
    pub headers: BTreeMap<&'static str, (&'static str, Value)>,
}

/// The request body of an operation.
#[derive(Debug, Clone)]
pub struct RequestBody {
    /// Its media type.
    pub media: &'static str,
    /// Its schema.
    pub schema: Value,
    /// False when an empty body is accepted too.
    pub required: bool,
    /// For people.
    pub description: &'static str,
}

/// One operation being described: filled by its handler's arguments, then its answer.
pub struct Operation<'a> {
    /// `GET`, `POST`.
    pub method: &'static str,
    /// The media type of a 200 answer whose type does not say (a plain `Response`).
    pub produces: Option<&'static str>,
    /// The document's schemas.
    pub schemas: &'a mut Schemas,
    /// What the request carries, if anything.
    pub body: Option<RequestBody>,
    /// Query and header parameters (path parameters come from the path).
    pub parameters: Vec<Value>,
    /// The answers by status.
    pub answers: BTreeMap<u16, Answer>,
    /// Statuses the handler gives through its error type, whose media the answer type decides
    /// ([`Operation::error_content`]).
    pub errors: Vec<u16>,
    /// How the handler's errors look (set by the answer type).
    pub error_content: BTreeMap<&'static str, Value>,
}

/// What a status means, for the descriptions of errors.
pub fn meaning(status: u16) -> &'static str {
    match status {
        200 => "OK",
        303 => "See other: a redirect (`Location`)",
        400 => "Malformed request: a body, query or path parameter that cannot be read, or a value out of range",
        401 => "Missing, unknown or revoked credentials",
        403 => "Not allowed: the credential's role, scope or device does not reach this",
        404 => "No such object (or this feature is not configured)",
        408 => "The request, or its body, took longer than `limits.request_timeout` / `limits.body_timeout`",
        409 => "Conflicts with the current state (the message says what is in the way)",
        410 => "Gone: an expired or used pairing",
        413 => "Body larger than 1 MiB, or too many items in one request",
        415 => "A body whose Content-Type is not what the operation reads",
        422 => "A form body whose fields cannot be read",
        429 => "Too many attempts: wait the `Retry-After` seconds",
        503 => "The controller's database is unavailable: try again",
        _ => "See the message",
    }
}

impl<'a> Operation<'a> {
    /// An empty description of a `method` operation.
    pub fn new(
        method: &'static str,
        produces: Option<&'static str>,
        schemas: &'a mut Schemas,
    ) -> Self {
        Operation {
            method,
            produces,
            schemas,
            body: None,
            parameters: Vec::new(),
            answers: BTreeMap::new(),
            errors: Vec::new(),
            error_content: BTreeMap::new(),
        }
    }

    /// `status` answers with `content` (media → schema), added to what it had.
    pub fn respond(&mut self, status: u16, content: &[(&'static str, Value)]) {
        let a = self.answers.entry(status).or_insert_with(|| Answer {
            description: meaning(status).to_owned(),
            ..Answer::default()
        });
        for (media, schema) in content {
            a.content.entry(media).or_insert_with(|| schema.clone());
        }
        if status == 429 {
            a.headers.insert(
                "Retry-After",
                (
                    "Seconds to wait before trying again",
                    json!({"type": "string", "pattern": "^[0-9]+$"}),
                ),
            );
        }
    }

    /// The handler may fail with `status` through its error type.
    pub fn error(&mut self, status: u16) {
        if !self.errors.contains(&status) {
            self.errors.push(status);
        }
    }

    /// The query parameters of `T` (a struct whose fields are the parameters).
    pub fn query<T: JsonSchema>(&mut self) {
        let schema = SchemaSettings::draft2020_12()
            .with(|s| {
                s.inline_subschemas = true;
                s.meta_schema = None;
            })
            .for_deserialize()
            .into_generator()
            .into_root_schema_for::<T>()
            .to_value();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(props) = schema["properties"].as_object() {
            for (name, p) in props {
                let mut p = p.clone();
                let description = p
                    .as_object_mut()
                    .and_then(|m| m.remove("description"))
                    .unwrap_or(Value::Null);
                let mut param = json!({
                    "name": name,
                    "in": "query",
                    "required": required.contains(&name.as_str()),
                    "schema": p,
                });
                if let Value::String(d) = description {
                    param["description"] = Value::String(d);
                }
                self.parameters.push(param);
            }
        }
    }

    /// The operation's `responses`: every answer, and the handler's errors in
    /// [`Operation::error_content`] (or with no body if it gave none).
    pub fn responses(&mut self) -> Value {
        let content: Vec<(&'static str, Value)> = self
            .error_content
            .iter()
            .map(|(m, s)| (*m, s.clone()))
            .collect();
        for status in std::mem::take(&mut self.errors) {
            self.respond(status, &content);
        }
        let mut out = Map::new();
        for (status, a) in &self.answers {
            let mut r = json!({"description": a.description});
            if !a.content.is_empty() {
                r["content"] = a
                    .content
                    .iter()
                    .map(|(m, s)| (m.to_string(), json!({"schema": s})))
                    .collect::<Map<_, _>>()
                    .into();
            }
            if !a.headers.is_empty() {
                r["headers"] = a
                    .headers
                    .iter()
                    .map(|(h, (d, s))| (h.to_string(), json!({"description": d, "schema": s})))
                    .collect::<Map<_, _>>()
                    .into();
            }
            out.insert(status.to_string(), r);
        }
        Value::Object(out)
    }
}

/// A handler argument: what it reads from the request, and how it refuses.
pub trait DescribeArg {
    /// Adds what this argument reads and the answers it gives to `op`.
    fn describe(op: &mut Operation<'_>);
}

/// A handler's answer type: what it answers and how its errors look.
pub trait DescribeAnswer {
    /// Adds the answers to `op`.
    fn describe(op: &mut Operation<'_>);
}

/// A handler, described by its arguments and its answer (implemented for every `async fn` of
/// up to seven describable arguments).
pub trait DescribeHandler<Args> {
    /// Describes the handler into `op`.
    fn describe(op: &mut Operation<'_>);
}

macro_rules! describe_handler {
    ($($arg:ident),*) => {
        impl<F, Fut, $($arg,)*> DescribeHandler<($($arg,)*)> for F
        where
            F: FnOnce($($arg),*) -> Fut,
            Fut: Future,
            Fut::Output: DescribeAnswer,
            $($arg: DescribeArg,)*
        {
            fn describe(op: &mut Operation<'_>) {
                $(<$arg as DescribeArg>::describe(op);)*
                <Fut::Output as DescribeAnswer>::describe(op);
            }
        }
    };
}

describe_handler!();
describe_handler!(A1);
describe_handler!(A1, A2);
describe_handler!(A1, A2, A3);
describe_handler!(A1, A2, A3, A4);
describe_handler!(A1, A2, A3, A4, A5);
describe_handler!(A1, A2, A3, A4, A5, A6);
describe_handler!(A1, A2, A3, A4, A5, A6, A7);

/// A plain-text message (axum's own refusals).
pub fn text() -> Value {
    json!({"type": "string"})
}

// Arguments that read nothing a client must send.
impl<S> DescribeArg for axum::extract::State<S> {
    fn describe(_: &mut Operation<'_>) {}
}
impl<T> DescribeArg for axum::extract::ConnectInfo<T> {
    fn describe(_: &mut Operation<'_>) {}
}
impl DescribeArg for axum::http::HeaderMap {
    fn describe(_: &mut Operation<'_>) {}
}
impl DescribeArg for axum::http::Uri {
    fn describe(_: &mut Operation<'_>) {}
}

/// axum's path extractor: a parameter it cannot decode is a plain-text 400; an id that names
/// nothing is the handler's 404.
impl<T> DescribeArg for axum::extract::Path<T> {
    fn describe(op: &mut Operation<'_>) {
        op.respond(400, &[(TEXT, text())]);
        op.error(404);
    }
}

/// axum's query extractor: the parameters of `T`; one it cannot read is a plain-text 400.
impl<T: JsonSchema> DescribeArg for axum::extract::Query<T> {
    fn describe(op: &mut Operation<'_>) {
        op.query::<T>();
        op.respond(400, &[(TEXT, text())]);
    }
}

/// axum's form extractor: a form body of `T`; a body of another type is a plain-text 415, an
/// unreadable one 400 or 422, one over the limit 413.
impl<T: JsonSchema> DescribeArg for axum::Form<T> {
    fn describe(op: &mut Operation<'_>) {
        let schema = op.schemas.input::<T>();
        op.body = Some(RequestBody {
            media: FORM,
            schema,
            required: true,
            description: "An HTML form",
        });
        for status in [400, 413, 415, 422] {
            op.respond(status, &[(TEXT, text())]);
        }
    }
}

/// A JSON answer of `T` (the document itself).
impl<T: JsonSchema> DescribeAnswer for axum::Json<T> {
    fn describe(op: &mut Operation<'_>) {
        let schema = op.schemas.output::<T>();
        op.respond(200, &[(JSON, schema)]);
    }
}

/// A response the handler builds itself: a 200 of the route's declared media type (HTML when
/// it declares none); errors as plain text.
impl DescribeAnswer for axum::response::Response {
    fn describe(op: &mut Operation<'_>) {
        let media = op.produces.unwrap_or(HTML);
        op.respond(200, &[(media, text())]);
        op.error_content.insert(TEXT, text());
    }
}
