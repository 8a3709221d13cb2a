//! Internationalised domain names in policy decisions. Policies list domains as A-labels
//! (`xn--bcher-kva.test`); a peer may write the same domain in Unicode (`bücher.test`,
//! `BÜCHER.test`, full-width `ｂücher.test`), which a resolver or a backend maps to that A-label
//! (UTS #46). So a non-ASCII domain is matched by the A-labels it maps to, never by guesswork.

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
