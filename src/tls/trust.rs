//! `trust`: the anchors (the OS store, extra PEM CA bundles) and CRLs peer certificates are
//! verified against, loaded once per runtime (start and each reload) into one [`Trust`] that
//! every listener shares, with a summary `check` prints.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::{DistinguishedName, RootCertStore};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::config::TrustConfig;

/// The loaded trust of one runtime.
#[derive(Debug, Clone)]
pub struct Trust {
    pub roots: Arc<RootCertStore>,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// The subjects of the `ca_files` anchors: the CA names hinted in a CertificateRequest.
    /// The OS store's ~150 names are not sent: they would add kilobytes to every handshake
    /// and a partner's certificate from a public CA is sent without a hint anyway.
    pub hints: Vec<DistinguishedName>,
    pub summary: TrustSummary,
}

/// What was loaded, for `check` and the start-up log.
#[derive(Debug, Clone, Default)]
pub struct TrustSummary {
    /// Anchors from the OS store (`None`: `system_roots: false`) and the store's complaints.
    pub system: Option<(usize, Vec<String>)>,
    /// Each CA file and the anchors it gave.
    pub ca_files: Vec<(PathBuf, usize)>,
    pub crls: Vec<CrlSummary>,
}

#[derive(Debug, Clone)]
pub struct CrlSummary {
    pub path: PathBuf,
    pub issuer: String,
    pub revoked: usize,
    /// nextUpdate, unix seconds, if the CRL has one.
    pub next_update: Option<i64>,
    /// Its issuer's newer CRL is loaded too: this one is not used ([`newest_only`]).
    pub superseded: bool,
    order: CrlOrder,
}

/// Which CRL is newer than which: only a CRL of the same issuer (its name, and the key it
/// signs with when the CRL names it), by the higher CRL number, else the later thisUpdate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CrlOrder {
    issuer: Vec<u8>,
    key: Option<Vec<u8>>,
    /// The CRL number, big-endian without leading zeros, if it has one.
    number: Option<Vec<u8>>,
    this_update: i64,
}

impl CrlOrder {
    /// Whether `self` supersedes `other`: the same issuer, and newer.
    fn supersedes(&self, other: &CrlOrder) -> bool {
        if (&self.issuer, &self.key) != (&other.issuer, &other.key) {
            return false;
        }
        match (&self.number, &other.number) {
            (Some(a), Some(b)) => (a.len(), a) > (b.len(), b),
            _ => self.this_update > other.this_update,
        }
    }
}

/// The CRLs a verifier is given: of each issuer's, the newest only. A verifier reads only the
/// first CRL whose issuer name matches a certificate's issuer (rustls-webpki): an older one
/// listed first (a directory of last month's and this month's, a bundle) would hide a
/// revocation the newer one holds. Two of the same rank are both kept.
fn newest_only(crls: &mut [Crl]) {
    let orders: Vec<CrlOrder> = crls.iter().map(|(_, c)| c.order.clone()).collect();
    for (i, (_, info)) in crls.iter_mut().enumerate() {
        info.superseded = orders.iter().any(|o| o.supersedes(&orders[i]));
    }
}

impl Trust {
    /// Whether `other` holds the same anchors and CRLs (files re-read by a reload may have
    /// changed while the configuration did not).
    pub fn same_anchors(&self, other: &Trust) -> bool {
        self.roots.roots == other.roots.roots && self.crls == other.crls
    }

    /// Reads every anchor and CRL; each problem names its key path and file.
    pub fn load(config: &TrustConfig) -> Result<Trust, Vec<String>> {
        let mut problems = Vec::new();
        let mut roots = RootCertStore::empty();
        let mut summary = TrustSummary::default();
        if config.system_roots {
            let native = rustls_native_certs::load_native_certs();
            let errors: Vec<String> = native.errors.iter().map(ToString::to_string).collect();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            summary.system = Some((added, errors));
        }
        let mut partner = RootCertStore::empty();
        for (i, path) in config.ca_files.iter().enumerate() {
            let key = format!("trust.ca_files[{i}]");
            match ca_file(path) {
                Ok(certs) => {
                    let (added, ignored) = partner.add_parsable_certificates(certs.clone());
                    roots.add_parsable_certificates(certs);
                    if ignored > 0 {
                        problems.push(format!(
                            "{key}: {}: {ignored} certificate(s) cannot be used as trust anchors",
                            path.display()
                        ));
                    }
                    summary.ca_files.push((path.clone(), added));
                }
                Err(e) => problems.push(format!("{key}: {}: {e}", path.display())),
            }
        }
        let mut found_crls = Vec::new();
        for (i, path) in config.crl_files.iter().enumerate() {
            let key = format!("trust.crl_files[{i}]");
            match crl_file(path) {
                Ok(found) => found_crls.extend(found),
                Err(e) => problems.push(format!("{key}: {}: {e}", path.display())),
            }
        }
        newest_only(&mut found_crls);
        let mut crls = Vec::new();
        for (der, info) in found_crls {
            if !info.superseded {
                crls.push(der);
            }
            summary.crls.push(info);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Trust {
            roots: Arc::new(roots),
            crls,
            hints: partner.subjects(),
            summary,
        })
    }

    /// Lines for `check`: anchors counted, CRLs with their issuer and next update.
    pub fn describe(&self) -> String {
        let s = &self.summary;
        let mut lines = Vec::new();
        lines.push(format!("trust: {} anchors", self.roots.len()));
        match &s.system {
            None => lines.push("  system roots: off".to_owned()),
            Some((n, errors)) => {
                lines.push(format!("  system roots: {n} anchors"));
                for e in errors {
                    lines.push(format!("    (the OS store reported: {e})"));
                }
            }
        }
        for (path, n) in &s.ca_files {
            lines.push(format!("  ca file {}: {n} anchors", path.display()));
        }
        for crl in &s.crls {
            // A CRL past its next update still applies, but the partner CA has published a
            // newer one that the sidecar does not have: say so.
            let now = crate::clock::unix_now();
            let next = crl.next_update.map_or_else(
                || "no next update".to_owned(),
                |t| {
                    let stale = if t < now {
                        " (passed: fetch a newer CRL)"
                    } else {
                        ""
                    };
                    format!("next update {}{stale}", smtp_core::date::format_rfc3339(t))
                },
            );
            let used = match crl.superseded {
                true => " (superseded by a newer CRL of its issuer: not used)",
                false => "",
            };
            lines.push(format!(
                "  crl {}: issuer {}, {} revoked, {next}{used}",
                crl.path.display(),
                crl.issuer,
                crl.revoked
            ));
        }
        lines.join("\n")
    }
}

fn ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate found".to_owned());
    }
    Ok(certs)
}

type Crl = (CertificateRevocationListDer<'static>, CrlSummary);

/// A PEM file (one or more `X509 CRL` blocks) or one DER CRL.
fn crl_file(path: &Path) -> Result<Vec<Crl>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let ders = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let found = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, pem::Error>>()
            .map_err(|e| format!("not a PEM CRL: {e}"))?;
        if found.is_empty() {
            return Err("no PEM \"X509 CRL\" block found".to_owned());
        }
        found
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    ders.into_iter()
        .map(|der| {
            let info = crl_summary(path, &der)?;
            Ok((der, info))
        })
        .collect()
}

fn crl_summary(path: &Path, der: &[u8]) -> Result<CrlSummary, String> {
    let (rest, crl) =
        CertificateRevocationList::from_der(der).map_err(|e| format!("not a valid CRL: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the CRL".to_owned());
    }
    // rustls parses it again when the verifier is built; a CRL it cannot use fails here too.
    webpki_check(der)?;
    let key = crl
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        });
    let order = CrlOrder {
        issuer: crl.issuer().as_raw().to_vec(),
        key,
        number: crl.crl_number().map(|n| n.to_bytes_be()),
        this_update: crl.last_update().timestamp(),
    };
    Ok(CrlSummary {
        path: path.to_owned(),
        issuer: crl.issuer().to_string(),
        revoked: crl.iter_revoked_certificates().count(),
        next_update: crl.next_update().map(|t| t.timestamp()),
        superseded: false,
        order,
    })
}

/// Whether rustls's verifier accepts the CRL (it is stricter than x509-parser about
/// extensions), so a bad file is a configuration error, not a failure at the first handshake.
fn webpki_check(der: &[u8]) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    // Any anchor will do: the builder only refuses an empty store before looking at CRLs.
    roots.roots.push(rustls::pki_types::TrustAnchor {
        subject: rustls::pki_types::Der::from_slice(&[]),
        subject_public_key_info: rustls::pki_types::Der::from_slice(&[]),
        name_constraints: None,
    });
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::provider())
        .with_crls([CertificateRevocationListDer::from(der.to_vec())])
        .build()
        .map(|_| ())
        .map_err(|e| format!("not a usable CRL: {e}"))
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
        KeyIdMethod, KeyPair, SerialNumber,
    };

    use super::Trust;
    use crate::config::TrustConfig;

    /// `check` says when a CRL's next update has passed: the partner CA has a newer one.
    #[test]
    fn a_crl_past_its_next_update_is_pointed_out() {
        let dir = super::super::test_util::TempDir::new("trust-crl");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Partner CA");
        let key = KeyPair::generate().expect("key");
        let cert = ca.clone().self_signed(&key).expect("ca");
        let issuer = Issuer::new(ca, key);
        let crl = |next: i32| {
            CertificateRevocationListParams {
                this_update: rcgen::date_time_ymd(2024, 1, 1),
                next_update: rcgen::date_time_ymd(next, 1, 1),
                crl_number: SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: Vec::new(),
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(&issuer)
            .expect("crl")
        };
        let stale = dir.write("stale.crl", crl(2025).der().as_ref());
        let fresh = dir.write("fresh.crl", crl(2089).der().as_ref());
        let root = dir.write("root.pem", cert.pem());
        let trust = Trust::load(&TrustConfig {
            system_roots: false,
            ca_files: vec![root],
            crl_files: vec![stale, fresh],
        })
        .expect("trust");
        let text = trust.describe();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("crl ")).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with("next update 2025-01-01T00:00:00Z (passed: fetch a newer CRL)"),
            "{text}"
        );
        assert!(
            lines[1].ends_with("next update 2089-01-01T00:00:00Z"),
            "{text}"
        );
    }

    /// A partner CA named `name`, with a new key, as anchor and CRL issuer.
    fn partner_ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = ca.clone().self_signed(&key).expect("ca");
        (cert, Issuer::new(ca, key))
    }

    /// Its CRL number `number` of `year`, revoking `serials`.
    fn crl_of(
        issuer: &Issuer<'static, KeyPair>,
        number: u64,
        year: i32,
        serials: &[u64],
    ) -> Vec<u8> {
        let revoked_certs = serials
            .iter()
            .map(|&s| rcgen::RevokedCertParams {
                serial_number: SerialNumber::from(s),
                revocation_time: rcgen::date_time_ymd(year, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(year, 1, 1),
            next_update: rcgen::date_time_ymd(2089, 1, 1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .expect("crl")
        .der()
        .to_vec()
    }

    /// A verifier reads only the first CRL whose issuer name matches: of an issuer's CRLs
    /// the newest alone is given to it, wherever it is listed (a revocation in it would
    /// otherwise be hidden behind last month's); `check` says which is not used. Another CA
    /// of the same name (another key) keeps its own.
    #[test]
    fn only_the_newest_crl_of_an_issuer_is_used() {
        let dir = super::super::test_util::TempDir::new("trust-crl-order");
        let (cert, issuer) = partner_ca("Partner CA");
        let (twin_cert, twin) = partner_ca("Partner CA");
        let (older, newer) = (
            crl_of(&issuer, 1, 2024, &[]),
            crl_of(&issuer, 2, 2025, &[7]),
        );
        let twins = crl_of(&twin, 1, 2023, &[]);
        let files = [
            dir.write("older.crl", &older),
            dir.write("twin.crl", &twins),
            dir.write("newer.crl", &newer),
        ];
        let trust = Trust::load(&TrustConfig {
            system_roots: false,
            ca_files: vec![
                dir.write("root.pem", cert.pem()),
                dir.write("twin.pem", twin_cert.pem()),
            ],
            crl_files: files.to_vec(),
        })
        .expect("trust");
        let used: Vec<&[u8]> = trust.crls.iter().map(|c| c.as_ref()).collect();
        assert_eq!(used, [twins.as_slice(), newer.as_slice()]);
        let text = trust.describe();
        let unused: Vec<&str> = text.lines().filter(|l| l.contains("not used")).collect();
        assert_eq!(unused.len(), 1, "{text}");
        assert!(unused[0].contains("older.crl"), "{text}");
    }
}
