//! Requests: counts by method, route template and status, latency by route
//! template, and latency and results by dialect operation (encrypt,
//! decrypt, sign, create_key, ...), aggregatable across nodes.
//!
//! One [`RouteStats`] per (method, route template) the router answered,
//! made on its first request and kept for the process's life (route
//! templates are a fixed set: memory is constant whatever the traffic).
//! A request finds its entry with one hash look-up of the template under a
//! read lock and records with atomic adds: no allocation.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use super::{escape, header, sample, Counter, Histogram};

/// Methods with their own series; any other is `OTHER`.
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "OTHER",
];

/// Statuses counted apart; any other is counted under its class (`2xx`,
/// `4xx`, ...) so that the set of series stays bounded.
const STATUSES: [u16; 24] = [
    200, 201, 202, 204, 301, 302, 304, 400, 401, 403, 404, 405, 406, 408, 409, 413, 414, 415, 422,
    429, 500, 502, 503, 504,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_slot(status: u16) -> usize {
    match STATUSES.iter().position(|&s| s == status) {
        Some(i) => i,
        None => STATUSES.len() + usize::from((status / 100).clamp(1, 5) - 1),
    }
}

/// The counters of one dialect operation.
#[derive(Debug)]
pub struct OpStats {
    dialect: &'static str,
    operation: Box<str>,
    duration: Histogram,
    /// success (2xx), client_error (4xx), server_error (5xx and others).
    results: [Counter; 3],
}

/// The counters of one (method, route template).
#[derive(Debug)]
pub struct RouteStats {
    method: &'static str,
    route: Box<str>,
    op: Option<&'static OpStats>,
    duration: Histogram,
    statuses: [Counter; STATUSES.len() + CLASSES.len()],
}

impl RouteStats {
    /// Counts one answered request and its latency, on the route and on
    /// its dialect operation.
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.statuses[status_slot(status)].inc();
        self.duration.observe(elapsed);
        if let Some(op) = self.op {
            op.duration.observe(elapsed);
            let r = match status {
                200..=299 => 0,
                400..=499 => 1,
                _ => 2,
            };
            op.results[r].inc();
        }
    }

    /// The route template.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The dialect (`naver`, `nhn`) and operation, for API routes.
    pub fn operation(&self) -> Option<(&'static str, &str)> {
        self.op.map(|o| (o.dialect, &*o.operation))
    }
}

type Slots = [OnceLock<&'static RouteStats>; METHODS.len()];

#[derive(Default)]
struct Registry {
    routes: RwLock<HashMap<Box<str>, &'static Slots>>,
    ops: RwLock<Vec<&'static OpStats>>,
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

fn method_slot(method: &str) -> usize {
    METHODS
        .iter()
        .position(|m| *m == method)
        .unwrap_or(METHODS.len() - 1)
}

/// The entry of `method` on route template `route`; on its first request,
/// `classify` names its dialect and operation (`None` for the service's
/// own endpoints).
pub fn route(
    method: &str,
    route: &str,
    classify: impl FnOnce() -> Option<(&'static str, String)>,
) -> &'static RouteStats {
    let m = method_slot(method);
    let reg = registry();
    let slots = reg
        .routes
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(route)
        .copied();
    let slots = match slots {
        Some(s) => s,
        None => {
            let mut w = reg.routes.write().unwrap_or_else(|p| p.into_inner());
            *w.entry(route.into())
                .or_insert_with(|| Box::leak(Box::new(std::array::from_fn(|_| OnceLock::new()))))
        }
    };
    slots[m].get_or_init(|| {
        let op = classify().map(|(dialect, operation)| op_stats(dialect, &operation));
        Box::leak(Box::new(RouteStats {
            method: METHODS[m],
            route: route.into(),
            op,
            duration: Histogram::latency(),
            statuses: std::array::from_fn(|_| Counter::new()),
        }))
    })
}

fn op_stats(dialect: &'static str, operation: &str) -> &'static OpStats {
    let reg = registry();
    let mut ops = reg.ops.write().unwrap_or_else(|p| p.into_inner());
    if let Some(o) = ops
        .iter()
        .find(|o| o.dialect == dialect && &*o.operation == operation)
    {
        return o;
    }
    let o: &'static OpStats = Box::leak(Box::new(OpStats {
        dialect,
        operation: operation.into(),
        duration: Histogram::latency(),
        results: std::array::from_fn(|_| Counter::new()),
    }));
    ops.push(o);
    o
}

/// `CamelCase` or `kebab-case` as `snake_case` (operation names).
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c == '-' || c == '.' {
            out.push('_');
        } else {
            out.push(c);
        }
    }
    out
}

/// An operation name for a route without a better one: its literal path
/// segments after the dialect's prefix, in snake case, led by the method
/// when the template ends in a parameter (`get_keystores_keys`).
pub fn generic_operation(method: &str, template: &str, skip: usize) -> String {
    let segs: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
    let literal: Vec<String> = segs
        .iter()
        .skip(skip)
        .filter(|s| !s.starts_with('{'))
        .map(|s| snake_case(s))
        .collect();
    let ends_in_param = segs.last().is_some_and(|s| s.starts_with('{'));
    let mut name = literal.join("_");
    if ends_in_param || name.is_empty() {
        name = if name.is_empty() {
            method.to_ascii_lowercase()
        } else {
            format!("{}_{name}", method.to_ascii_lowercase())
        };
    }
    name
}

/// Writes the request and operation families.
pub(super) fn render(out: &mut String) {
    let reg = registry();
    let mut routes: Vec<&'static RouteStats> = reg
        .routes
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .flat_map(|slots| slots.iter().filter_map(|s| s.get().copied()))
        .collect();
    routes.sort_by(|a, b| (&a.route, a.method).cmp(&(&b.route, b.method)));

    header(
        out,
        "hsm_kms_requests_total",
        "counter",
        "Answered requests by method, route template and status (statuses outside the usual set as their class, e.g. 4xx).",
    );
    for r in &routes {
        let route = escape(&r.route);
        for (i, c) in r.statuses.iter().enumerate() {
            let n = c.get();
            if n == 0 {
                continue;
            }
            let status = match STATUSES.get(i) {
                Some(s) => s.to_string(),
                None => CLASSES[i - STATUSES.len()].to_string(),
            };
            sample(
                out,
                "hsm_kms_requests_total",
                &format!(
                    "method=\"{}\",route=\"{route}\",status=\"{status}\"",
                    r.method
                ),
                n,
            );
        }
    }
    header(
        out,
        "hsm_kms_request_duration_seconds",
        "histogram",
        "Request latency by method and route template, from routing to the answer (buckets 100 us to 10 s).",
    );
    for r in &routes {
        r.duration.write(
            out,
            "hsm_kms_request_duration_seconds",
            &format!("method=\"{}\",route=\"{}\"", r.method, escape(&r.route)),
        );
    }

    let mut ops: Vec<&'static OpStats> = reg.ops.read().unwrap_or_else(|p| p.into_inner()).clone();
    ops.sort_by(|a, b| (a.dialect, &a.operation).cmp(&(b.dialect, &b.operation)));
    header(
        out,
        "hsm_kms_operation_duration_seconds",
        "histogram",
        "Latency of each dialect operation (naver, nhn; encrypt, decrypt, sign, create_key, ...), all its routes together.",
    );
    for o in &ops {
        o.duration.write(
            out,
            "hsm_kms_operation_duration_seconds",
            &format!(
                "dialect=\"{}\",operation=\"{}\"",
                o.dialect,
                escape(&o.operation)
            ),
        );
    }
    header(
        out,
        "hsm_kms_operations_total",
        "counter",
        "Dialect operations by result: success (2xx), client_error (4xx), server_error (5xx).",
    );
    for o in &ops {
        for (i, result) in ["success", "client_error", "server_error"]
            .iter()
            .enumerate()
        {
            sample(
                out,
                "hsm_kms_operations_total",
                &format!(
                    "dialect=\"{}\",operation=\"{}\",result=\"{result}\"",
                    o.dialect,
                    escape(&o.operation)
                ),
                o.results[i].get(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names() {
        assert_eq!(snake_case("GetKeyInfo"), "get_key_info");
        assert_eq!(snake_case("create-custom-key"), "create_custom_key");
        assert_eq!(
            generic_operation(
                "POST",
                "/keymanager/v1.2/appkey/{appkey}/symmetric-keys/{keyid}/encrypt",
                4
            ),
            "symmetric_keys_encrypt"
        );
        assert_eq!(
            generic_operation(
                "GET",
                "/keymanager/v1.2/appkey/{appkey}/keystores/{ksid}",
                4
            ),
            "get_keystores"
        );
        assert_eq!(status_slot(200), 0);
        assert_eq!(status_slot(418), STATUSES.len() + 3);
    }

    #[test]
    fn one_entry_per_method_and_route() {
        let a = route("POST", "/t/{x}/encrypt", || {
            Some(("naver", "encrypt".into()))
        });
        let b = route("POST", "/t/{x}/encrypt", || unreachable!());
        assert!(std::ptr::eq(a, b));
        let c = route("POST", "/t2/{x}/encrypt", || {
            Some(("naver", "encrypt".into()))
        });
        assert!(std::ptr::eq(a.op.unwrap(), c.op.unwrap()));
        a.record(200, Duration::from_millis(1));
        c.record(503, Duration::from_millis(1));
        let mut out = String::new();
        render(&mut out);
        assert!(
            out.contains("hsm_kms_operations_total{dialect=\"naver\",operation=\"encrypt\",result=\"server_error\"} 1"),
            "{out}"
        );
    }
}
