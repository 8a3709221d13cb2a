//! Internationalised domain names in policy decisions. Policies list domains as A-labels
//! (`xn--bcher-kva.test`); a peer may write the same domain in Unicode (`bücher.test`,
//! `BÜCHER.test`, full-width `ｂücher.test`), which a resolver or a backend maps to that A-label
//! (UTS #46). So a non-ASCII domain is matched by the A-labels it maps to, never by guesswork.
//! And a recipient domain is routed only if it is a domain name ([`routable`]).

/// The ASCII forms (lower case, no trailing dot) a UTS #46 implementation may map a non-ASCII
/// `domain` to: the nontransitional mapping, and the transitional one (`ß` → `ss`, `ς` → `σ`,
/// joiners removed) where it differs, since older implementations still apply it. Empty for
/// an ASCII domain (compared as it is) and for one that maps to no valid name.
pub fn ascii_forms(domain: &str) -> Vec<String> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_ascii() {
        return Vec::new();
    }
    let mut transitional = String::with_capacity(domain.len() + 1);
    for c in domain.chars() {
        match c {
            'ß' | 'ẞ' => transitional.push_str("ss"),
            'ς' => transitional.push('σ'),
            '\u{200c}' | '\u{200d}' => {}
            _ => transitional.push(c),
        }
    }
    let mut forms: Vec<String> = [domain, transitional.as_str()]
        .into_iter()
        .filter_map(|d| idna::domain_to_ascii(d).ok())
        .map(|a| a.strip_suffix('.').map(str::to_owned).unwrap_or(a))
        .filter(|a| !a.is_empty())
        .collect();
    forms.dedup();
    forms
}

/// The name a recipient `domain` is routed by: its A-labels (a non-ASCII domain mapped by UTS
/// #46, nontransitionally, as a resolver maps it), lower case, no trailing dot, within RFC
/// 1035 §2.3.4's limits, each label letters, digits, `-` and `_`. `Err` says why it is no
/// domain name: the RCPT is refused (`501 5.1.3`) whether its next hop is found by MX or is a
/// fixed relay, where the policy's level is looked up by this domain, and a relay may read
/// `b@example.net(x)` as mail for `example.net` though no listed name matches it.
pub fn routable(domain: &str) -> Result<String, &'static str> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() {
        return Err("empty");
    }
    let ascii = if domain.is_ascii() {
        domain.to_ascii_lowercase()
    } else {
        ascii_forms(domain)
            .into_iter()
            .next()
            .ok_or("not a valid IDN")?
    };
    // 255 octets on the wire = at most 253 characters in text without the root dot.
    if ascii.len() > 253 {
        return Err("longer than 253 characters");
    }
    for label in ascii.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("a label is empty or longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a label has characters other than letters, digits, '-', '_'");
        }
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests {
    use super::routable;

    #[test]
    fn routable_names_are_checked_and_lowercased() {
        assert_eq!(routable("Example.TEST.").unwrap(), "example.test");
        assert_eq!(routable("bücher.test").unwrap(), "xn--bcher-kva.test");
        for bad in [
            "",
            ".",
            "a..b",
            "a b.test",
            "[127.0.0.1]",
            "example.net(x)",
            "example.net..",
            "example.net,",
            "\"example.net\"",
        ] {
            assert!(routable(bad).is_err(), "{bad:?}");
        }
        let long_label = format!("{}.test", "a".repeat(64));
        assert!(routable(&long_label).is_err());
        let long_name = vec!["a".repeat(63); 4].join(".");
        assert_eq!(long_name.len(), 255);
        assert!(routable(&long_name).is_err());
        let max = format!("{}.a", vec!["a".repeat(63); 3].join("."));
        assert_eq!(max.len(), 193);
        assert!(routable(&max).is_ok());
    }
}
