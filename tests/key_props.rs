//! Property tests for cache keys: equivalent queries share a key; identities never do.

use cachegate::cache::key::{base_key, full_key, normalize_query, KeyIdentity, VaryInput};
use cachegate::config::QueryRule;
use http::HeaderMap;
use proptest::prelude::*;

/// Encodes a query component randomly but equivalently: each byte either raw (when safe) or
/// percent-encoded with random hex case; spaces as `+` or `%20`.
fn encode_variant(s: &str, choices: &[bool]) -> String {
    let mut out = String::new();
    for (i, b) in s.bytes().enumerate() {
        let pick = choices.get(i % choices.len().max(1)).copied().unwrap_or(false);
        let safe = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        match (b, safe, pick) {
            (b' ', _, true) => out.push('+'),
            (_, true, false) => out.push(b as char),
            (_, _, true) => out.push_str(&format!("%{b:02x}")),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn key(query: &str, role: Option<&str>, tenant: Option<&str>) -> String {
    let id = KeyIdentity {
        role,
        tenant,
        user: None,
    };
    let headers = HeaderMap::new();
    full_key(
        &base_key("app:v1", "route", "", "/courses/", query, id),
        &[],
        VaryInput {
            headers: &headers,
            cookies: "",
            credentials_unresolved: false,
        },
    )
}

proptest! {
    #[test]
    fn reordering_and_reencoding_never_changes_the_key(
        pairs in prop::collection::btree_map("[a-z]{1,6}", "[ -~]{0,8}", 0..6),
        choices in prop::collection::vec(any::<bool>(), 1..16),
        seed in any::<u64>(),
    ) {
        let canonical: Vec<String> = pairs.iter().map(|(n, v)| format!("{}={}", encode_variant(n, &[false]), encode_variant(v, &[false]))).collect();
        let mut shuffled: Vec<String> = pairs.iter().map(|(n, v)| format!("{}={}", encode_variant(n, &choices), encode_variant(v, &choices))).collect();
        // A deterministic shuffle from the seed.
        let len = shuffled.len();
        if len > 1 {
            for i in 0..len {
                let j = (seed.rotate_left(i as u32) as usize) % len;
                shuffled.swap(i, j);
            }
        }
        let a = normalize_query(Some(&canonical.join("&")), &QueryRule::All);
        let b = normalize_query(Some(&shuffled.join("&")), &QueryRule::All);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(key(&a, Some("r"), Some("t")), key(&b, Some("r"), Some("t")));
    }

    #[test]
    /// Origins read the first or the last of repeated parameters: their order is kept.
    fn repeated_parameters_keep_their_order(name in "[a-z]{1,6}", v1 in "[a-z0-9]{0,4}", v2 in "[a-z0-9]{0,4}") {
        prop_assume!(v1 != v2);
        let a = normalize_query(Some(&format!("{name}={v1}&{name}={v2}")), &QueryRule::All);
        let b = normalize_query(Some(&format!("{name}={v2}&{name}={v1}")), &QueryRule::All);
        prop_assert_ne!(a, b);
    }

    #[test]
    fn different_roles_never_share_a_key(r1 in "[ -~]{0,12}", r2 in "[ -~]{0,12}", tenant in "[ -~]{0,6}") {
        prop_assume!(r1 != r2);
        prop_assert_ne!(key("", Some(&r1), Some(&tenant)), key("", Some(&r2), Some(&tenant)));
    }

    #[test]
    fn different_tenants_never_share_a_key(t1 in "[ -~]{0,12}", t2 in "[ -~]{0,12}", role in "[ -~]{0,6}") {
        prop_assume!(t1 != t2);
        prop_assert_ne!(key("", Some(&role), Some(&t1)), key("", Some(&role), Some(&t2)));
    }

    /// Separators inside values cannot shift one identity into another's key.
    #[test]
    fn identity_parts_cannot_be_shifted(a in "[a-z:%]{0,6}", b in "[a-z:%]{0,6}", c in "[a-z:%]{0,6}", d in "[a-z:%]{0,6}") {
        prop_assume!((a.as_str(), b.as_str()) != (c.as_str(), d.as_str()));
        prop_assert_ne!(key("", Some(&a), Some(&b)), key("", Some(&c), Some(&d)));
    }
}

#[test]
fn absent_and_empty_identity_parts_are_distinct_from_values() {
    assert_ne!(key("", None, Some("1")), key("", Some("1"), None));
}
