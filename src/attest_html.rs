//! The HTML form of an attestation report: one self-contained page (inline
//! style, no script, no external asset) an auditor can open anywhere:
//! summary first, then one table row per token object, then the signed
//! JSON itself so that the page can be checked with `hsm-kms attest verify`.

use std::fmt::Write as _;

use hsm_kms::core::attest::{Row, SignedReport, TokenView, FLAG_CODES};

/// `&`, `<`, `>`, `"` and `'` escaped for text and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font:13px/1.35 'DejaVu Sans',Arial,sans-serif;margin:24px;color:#111}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
.verdict{font-size:18px;padding:10px 14px;border-radius:4px;margin:12px 0}
.clean{background:#e6f4ea;border:1px solid #34a853}.flagged{background:#fce8e6;border:1px solid #d93025}
table{border-collapse:collapse;margin:4px 0}th,td{border:1px solid #bbb;padding:2px 4px;text-align:left;vertical-align:top}
th{background:#eee;font-size:11px}td.no{color:#999}td.bad{background:#fce8e6;font-weight:bold}
tr.group td{border-top:2px solid #555}td.wrap{min-width:115px;max-width:150px;word-break:break-all;font-family:'DejaVu Sans Mono',monospace;font-size:11px}code,.mono{font-family:'DejaVu Sans Mono',monospace;font-size:12px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:0}dt{font-weight:bold}dd{margin:0}
pre{white-space:pre-wrap;word-break:break-all;font-size:11px;background:#f6f6f6;padding:8px}
";

/// Renders `signed` with `json` (the file form of the same report) at the end.
pub fn render(signed: &SignedReport, json: &str) -> String {
    let r = &signed.report;
    let s = &r.summary;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>hsm-kms attestation report {}</title><style>{STYLE}</style></head><body>\n",
        esc(&r.generated_at)
    );
    let _ = writeln!(
        h,
        "<h1>hsm-kms attestation report</h1><div>generated {} &middot; scope {} &middot; token {} (serial {})</div>",
        esc(&r.generated_at),
        esc(&r.scope),
        esc(&r.token.label),
        esc(&r.token.serial)
    );
    let (class, verdict) = if s.flags == 0 {
        ("clean", "no disagreement between the token and the store")
    } else {
        (
            "flagged",
            "disagreements between the token and the store: see the flagged rows",
        )
    };
    let _ = writeln!(
        h,
        "<p id=\"summary\" class=\"verdict {class}\"><b>{} key versions, {} objects, {} flags</b> ({} flagged rows of {}): {verdict}.</p>",
        s.versions, s.objects, s.flags, s.flagged_rows, s.rows
    );
    if !s.by_code.is_empty() {
        h.push_str("<h2>Flags</h2><table><tr><th>flag</th><th>count</th><th>meaning</th></tr>");
        for (code, n) in &s.by_code {
            let meaning = FLAG_CODES
                .iter()
                .find(|(c, _)| c == code)
                .map(|(_, m)| *m)
                .unwrap_or("");
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td>{n}</td><td>{}</td></tr>",
                esc(code),
                esc(meaning)
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("<h2>Token and module</h2><dl>");
    let t = &r.token;
    let m = &r.module;
    for (k, v) in [
        (
            "token",
            format!("{} (slot {}: {})", t.label, t.slot_id, t.slot_description),
        ),
        (
            "manufacturer / model",
            format!("{} / {}", t.manufacturer, t.model),
        ),
        ("serial", t.serial.clone()),
        (
            "hardware / firmware",
            format!("{} / {}", t.hardware_version, t.firmware_version),
        ),
        ("token flags", t.flags.join(" ")),
        (
            "module",
            format!(
                "{} {} ({})",
                m.description, m.library_version, m.manufacturer
            ),
        ),
        ("PKCS#11 version", m.cryptoki_version.clone()),
        (
            "installation id",
            format!(
                "token {}, store {}: {}",
                r.installation.token.as_deref().unwrap_or("none"),
                r.installation.store.as_deref().unwrap_or("none"),
                if r.installation.agree {
                    "agree"
                } else {
                    "DISAGREE"
                }
            ),
        ),
        (
            "signed by",
            format!(
                "{} (public key SHA-256 {}), {} {}",
                r.attestation_key.label,
                r.attestation_key.public_key_sha256,
                signed.signature.alg,
                signed.signature.encoding
            ),
        ),
    ] {
        let _ = write!(h, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(&v));
    }
    h.push_str("</dl>\n<h2>Key versions and objects</h2>\n");
    table(&mut h, &r.rows);
    let _ = write!(
        h,
        "<h2>Signed report</h2><p>This page renders the report below. To check it: save the \
         block as <code>report.json</code>, get the public key with <code>hsm-kms attest \
         public-key</code> and run <code>hsm-kms attest verify report.json --public-key \
         attest.pem</code>.</p><pre class=\"mono\">{}</pre>\n</body></html>\n",
        esc(json.trim_end())
    );
    h
}

const HEAD: [&str; 17] = [
    "key",
    "ver",
    "dialect",
    "owner",
    "state",
    "class",
    "key type",
    "label",
    "CKA_ID",
    "LOCAL",
    "NEVER_EXTRACTABLE",
    "ALWAYS_SENSITIVE",
    "EXTRACTABLE",
    "SENSITIVE",
    "MODIFIABLE",
    "PRIVATE",
    "flags",
];

fn table(h: &mut String, rows: &[Row]) {
    h.push_str("<table><tr>");
    for c in HEAD {
        // Long attribute names may break after an underscore.
        let c = if c.len() > 10 {
            c.replace('_', "_<wbr>")
        } else {
            c.to_string()
        };
        let _ = write!(h, "<th>{c}</th>");
    }
    h.push_str("</tr>\n");
    for row in rows {
        let span = row.objects.len().max(1);
        let flags = row
            .flags
            .iter()
            .map(|f| match &f.object {
                Some(o) => format!("{} ({})", f.code, o),
                None => f.code.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ");
        let store = match &row.store {
            Some(s) => [
                s.key.clone(),
                s.version.map(|v| v.to_string()).unwrap_or_default(),
                s.dialect.clone(),
                format!(
                    "{}{}",
                    s.owner,
                    if s.export_policy {
                        " (export policy)"
                    } else {
                        ""
                    }
                ),
                match (&s.key_status, s.enabled) {
                    (Some(k), Some(e)) => format!(
                        "{} ({}, {})",
                        s.state,
                        k,
                        if e { "enabled" } else { "disabled" }
                    ),
                    _ => s.state.clone(),
                },
            ],
            None => [
                "not in the store".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ],
        };
        let flagged = if row.flags.is_empty() {
            ""
        } else {
            " class=\"bad\""
        };
        let mut first = String::from("<tr class=\"group\">");
        for (i, v) in store.iter().enumerate() {
            let wrap = if i == 0 { " class=\"wrap\"" } else { "" };
            let _ = write!(first, "<td rowspan=\"{span}\"{wrap}>{}</td>", esc(v));
        }
        if row.objects.is_empty() {
            let _ = writeln!(
                first,
                "<td colspan=\"11\" class=\"bad\">no object on the token</td><td{flagged}>{}</td></tr>",
                esc(&flags)
            );
            h.push_str(&first);
            continue;
        }
        for (i, o) in row.objects.iter().enumerate() {
            let mut tr = if i == 0 {
                std::mem::take(&mut first)
            } else {
                String::from("<tr>")
            };
            object_cells(&mut tr, o, row);
            if i == 0 {
                let _ = write!(tr, "<td rowspan=\"{span}\"{flagged}>{}</td>", esc(&flags));
            }
            tr.push_str("</tr>\n");
            h.push_str(&tr);
        }
    }
    h.push_str("</table>\n");
}

fn object_cells(h: &mut String, o: &TokenView, row: &Row) {
    let size = match (&o.key_type, o.bits, &o.curve) {
        (Some(k), _, Some(c)) => format!("{k} {c}"),
        (Some(k), Some(b), None) => format!("{k} {b}"),
        (Some(k), None, None) => k.clone(),
        (None, _, _) => String::new(),
    };
    for v in [&o.class, &size] {
        let _ = write!(h, "<td>{}</td>", esc(v));
    }
    for v in [&o.label, &o.id] {
        let _ = write!(h, "<td class=\"wrap\">{}</td>", esc(v));
    }
    // A cell is marked when a flag of this object names that attribute.
    let flagged = |code: &str| {
        row.flags
            .iter()
            .any(|f| f.code == code && f.object.as_deref() == Some(o.label.as_str()))
    };
    for (value, code) in [
        (o.local, "not-local"),
        (o.never_extractable, "extractable"),
        (o.always_sensitive, "not-sensitive"),
        (o.extractable, "extractable"),
        (o.sensitive, "not-sensitive"),
        (o.modifiable, "modifiable"),
        (o.private, "not-private"),
    ] {
        let class = if flagged(code) {
            " class=\"bad\""
        } else if value {
            ""
        } else {
            " class=\"no\""
        };
        let _ = write!(h, "<td{class}>{}</td>", if value { "yes" } else { "no" });
    }
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }
}
