//! Secrets out of logs, errors and reports: what the writer and the stream consumer print
//! instead of a connection URL, a webhook URL or a key.
//!
//! - [`url`]: a connection URL (Postgres, Redis) without its password, neither in the
//!   user-info (`user:password@`) nor in the query (`?password=`): the user, host, port and
//!   path stay, every query value but a few harmless ones is masked.
//! - [`origin`]: a URL whose path or query may itself be the credential (a webhook such as
//!   `https://hooks.example.com/services/T0/B0/token`): scheme, host and port only.
//! - [`prefix`]: a secret shown by its first characters only (`ser.abcd…`).
//! - [`item_key`]: a ledger item key (`environment_api_keys|ser.…`) with its server-side key
//!   shortened by [`prefix`].
//!
//! Each errs on the side of hiding: anything that does not parse as expected is masked whole.

/// What stands for a hidden value.
pub const MASK: &str = "***";

/// Query parameters whose values are shown: connection settings, never credentials.
const HARMLESS_QUERY_PARAMS: [&str; 9] = [
    "sslmode",
    "application_name",
    "connect_timeout",
    "statement_timeout",
    "options",
    "db",
    "protocol",
    "target_session_attrs",
    "sslrootcert",
];

/// How many leading characters of a secret [`prefix`] shows, at most.
pub const PREFIX_CHARS: usize = 8;

/// A connection URL without its password: `postgres://edge:s3cret@db:5432/core?password=x`
/// becomes `postgres://edge:***@db:5432/core?password=***`. Not a URL (no `scheme://`): the
/// whole value is masked.
pub fn url(raw: &str) -> String {
    let Some((scheme, rest)) = split_scheme(raw) else {
        return MASK.to_string();
    };
    let (userinfo, after) = split_userinfo(rest);
    let (before_fragment, fragment) = match after.split_once('#') {
        Some((b, _)) => (b, true),
        None => (after, false),
    };
    let (host_path, query) = match before_fragment.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (before_fragment, None),
    };
    let mut out = format!("{scheme}://");
    if let Some(userinfo) = userinfo {
        out.push_str(&redact_userinfo(userinfo));
        out.push('@');
    }
    out.push_str(host_path);
    if let Some(query) = query {
        out.push('?');
        out.push_str(&redact_query(query));
    }
    if fragment {
        out.push('#');
        out.push_str(MASK);
    }
    out
}

/// Only where a URL points: `scheme://host[:port]`, then `/…` when a path, query or fragment
/// followed (they may be the credential). Not a URL: the whole value is masked.
pub fn origin(raw: &str) -> String {
    let Some((scheme, rest)) = split_scheme(raw) else {
        return MASK.to_string();
    };
    let (_, after) = split_userinfo(rest);
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let more = if end < after.len() { "/…" } else { "" };
    format!("{scheme}://{}{more}", &after[..end])
}

/// The first characters of a secret and `…`: at most [`PREFIX_CHARS`], and never more than
/// a third of it, so that a short secret is not mostly shown. Empty stays empty.
pub fn prefix(secret: &str) -> String {
    let chars = secret.chars().count();
    if chars == 0 {
        return String::new();
    }
    let shown = PREFIX_CHARS.min(chars / 3);
    let head: String = secret.chars().take(shown).collect();
    format!("{head}…")
}

/// A ledger item key (`"{table kind}|{hash key}[|{range key}]"`, see [`crate::acks`]) fit
/// to print: the server-side key of an `environment_api_keys` item is shortened by
/// [`prefix`]; other items' keys (client-side keys, identifiers) are not secrets.
pub fn item_key(key: &str) -> String {
    match key.split_once('|') {
        Some((table, server_key))
            if table == crate::tables::TableKind::EnvironmentApiKeys.as_str() =>
        {
            format!("{table}|{}", prefix(server_key))
        }
        _ => key.to_string(),
    }
}

fn split_scheme(raw: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = raw.split_once("://")?;
    let valid = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some((scheme, rest))
}

/// The user-info (before the last `@`) and the rest. A password may hold `@`, `/`, `?` or
/// `#` unencoded, so the last `@` wins over the first delimiter; an `@` that was in a path
/// or query makes more than the user-info hidden, never less.
fn split_userinfo(rest: &str) -> (Option<&str>, &str) {
    match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    }
}

/// `user:***`, `user`, or `***` when the user-info is not a plain `user[:password]`.
fn redact_userinfo(userinfo: &str) -> String {
    let (user, password) = match userinfo.split_once(':') {
        Some((u, _)) => (u, true),
        None => (userinfo, false),
    };
    let plain = !user.contains(['/', '?', '#', '&', '=', '@']);
    match (plain, password) {
        (true, true) => format!("{user}:{MASK}"),
        (true, false) => user.to_string(),
        (false, _) => MASK.to_string(),
    }
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => {
                let harmless = HARMLESS_QUERY_PARAMS
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(name));
                if harmless {
                    format!("{name}={value}")
                } else {
                    format!("{name}={MASK}")
                }
            }
            None => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_passwords_are_masked() {
        assert_eq!(
            url("postgres://edge:s3cret@db.internal:5432/flagsmith"),
            "postgres://edge:***@db.internal:5432/flagsmith"
        );
        assert_eq!(
            url("rediss://:authtoken@cache.example.com:6379/0"),
            "rediss://:***@cache.example.com:6379/0"
        );
        assert_eq!(
            url("redis://default:p@ss@127.0.0.1:6379"),
            "redis://default:***@127.0.0.1:6379"
        );
        // A password with unencoded delimiters is hidden whole.
        let odd = url("postgres://u:pa/ss?x#y@db/core");
        assert!(!odd.contains("pa/ss") && !odd.contains("ss?x"), "{odd}");
        assert!(odd.ends_with("@db/core"), "{odd}");
    }

    #[test]
    fn query_credentials_are_masked_and_settings_kept() {
        assert_eq!(
            url("postgres://db:5432/core?user=edge&password=s3cret&sslmode=verify-full"),
            "postgres://db:5432/core?user=***&password=***&sslmode=verify-full"
        );
        assert_eq!(
            url("https://h/x?token=abc#frag"),
            "https://h/x?token=***#***"
        );
    }

    #[test]
    fn urls_without_secrets_are_unchanged() {
        for plain in [
            "redis://127.0.0.1:6379",
            "postgres://postgres@127.0.0.1:5432/postgres",
            "rediss://cache.example.com:6379/0",
        ] {
            assert_eq!(url(plain), plain);
        }
    }

    #[test]
    fn what_is_not_a_url_is_hidden_whole() {
        assert_eq!(url("host=db password=s3cret"), MASK);
        assert_eq!(url("s3cret"), MASK);
        assert_eq!(origin("not a url"), MASK);
    }

    #[test]
    fn origins_drop_paths_queries_and_credentials() {
        assert_eq!(
            origin("https://hooks.example.com/services/T0/B0/s3cretpath"),
            "https://hooks.example.com/…"
        );
        assert_eq!(
            origin("https://user:pw@hooks.example.com:8443?token=s3cret"),
            "https://hooks.example.com:8443/…"
        );
        assert_eq!(origin("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
    }

    #[test]
    fn prefixes_show_at_most_eight_characters_and_a_third() {
        assert_eq!(prefix("ser.abcdefghijklmnopqrstuvwx"), "ser.abcd…");
        assert_eq!(prefix("123456"), "12…");
        assert_eq!(prefix("ab"), "…");
        assert_eq!(prefix(""), "");
        // Characters, not bytes.
        assert_eq!(prefix(&"é".repeat(24)), "éééééééé…");
    }

    #[test]
    fn server_side_keys_in_item_keys_are_shortened() {
        assert_eq!(
            item_key("environment_api_keys|ser.abcdefghijklmnopqrstuvwx"),
            "environment_api_keys|ser.abcd…"
        );
        assert_eq!(item_key("environments|envAbc"), "environments|envAbc");
        assert_eq!(
            item_key("identities|envAbc_alice"),
            "identities|envAbc_alice"
        );
    }
}
