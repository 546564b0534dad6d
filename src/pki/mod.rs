//! The per-job certificate authority and its server and client certificates.
//!
//! Every job gets its own CA (ECDSA P-256), made in this process's memory. The CA signs exactly
//! two certificates: the sidecar's server certificate and the job's client certificate; then its
//! key is dropped. dockerd's `--tlsverify` accepts *any* client certificate that chains to its CA,
//! so a CA shared between jobs would turn one job's client certificate into a key to every other
//! job's daemon (threat J2). With one CA per job and the CA key gone before the job's first
//! script runs, no certificate can ever be minted for a daemon other than the one it was made for
//! (threat S5).
//!
//! [`client_config`] builds the rustls configuration the runner itself uses for its mTLS
//! connection to the sidecar: the job CA as the only root, the client certificate presented.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

/// Errors of the PKI module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Key generation or signing failed.
    #[error("could not issue the {what} certificate: {source}")]
    Issue {
        /// Which certificate.
        what: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// A PEM block could not be parsed.
    #[error("could not parse {what} PEM: {detail}")]
    Pem {
        /// Which object.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// rustls refused the material.
    #[error("could not build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A validity that does not fit in a certificate.
    #[error("validity {0:?} is out of range")]
    Validity(Duration),
}

/// A PEM-encoded private key. Zeroed when dropped; `Debug` prints `[PRIVATE KEY]`.
#[derive(Clone)]
pub struct PrivateKeyPem(Zeroizing<String>);

impl PrivateKeyPem {
    /// The PEM text. Call only where the key is used (written to a 0600 file, handed to rustls).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[PRIVATE KEY]")
    }
}

/// One half of the material: what a party (sidecar or job) gets, in dockerd's file names.
#[derive(Debug, Clone)]
pub struct CertBundle {
    /// `ca.pem`: the job CA certificate.
    pub ca_pem: String,
    /// `cert.pem`: the leaf certificate.
    pub cert_pem: String,
    /// `key.pem`: the leaf's private key.
    pub key_pem: PrivateKeyPem,
}

/// What to put in a job's certificates.
#[derive(Debug, Clone)]
pub struct PkiRequest {
    /// Job id, in the subject names (for people reading `openssl x509` output).
    pub job_id: u64,
    /// DNS names of the sidecar (`docker`, `localhost`).
    pub server_dns: Vec<String>,
    /// IP addresses of the sidecar (its address on the job network).
    pub server_ips: Vec<IpAddr>,
    /// How long the certificates are valid from now: the job timeout plus a margin.
    pub validity: Duration,
}

impl PkiRequest {
    /// The usual request: SANs `docker`, `localhost`, the sidecar IP and 127.0.0.1; validity =
    /// `timeout` + [`VALIDITY_MARGIN`].
    pub fn for_sidecar(job_id: u64, sidecar_ip: IpAddr, timeout: Duration) -> Self {
        PkiRequest {
            job_id,
            server_dns: vec!["docker".to_string(), "localhost".to_string()],
            server_ips: vec![sidecar_ip, IpAddr::from([127, 0, 0, 1])],
            validity: timeout.saturating_add(VALIDITY_MARGIN),
        }
    }
}

/// Added to the job timeout: covers preparation, `after_script` and teardown, which run outside
/// the script's own timeout.
pub const VALIDITY_MARGIN: Duration = Duration::from_secs(30 * 60);

/// Certificates start this long in the past so a sidecar whose clock is a little behind the
/// runner's still accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// A job's TLS material. The CA key is not in here: it was dropped when this was made.
#[derive(Debug, Clone)]
pub struct JobPki {
    /// The server half, for the sidecar's `/certs/server`.
    pub server: CertBundle,
    /// The client half, for the job container and the runner.
    pub client: CertBundle,
    /// When the certificates expire.
    pub not_after: SystemTime,
}

/// Makes a fresh CA, issues the server and client certificates and forgets the CA key.
pub fn issue_job_pki(req: &PkiRequest) -> Result<JobPki, Error> {
    let now = SystemTime::now();
    let not_before = to_offset(now.checked_sub(CLOCK_SKEW).unwrap_or(now), req.validity)?;
    let not_after_sys = now
        .checked_add(req.validity)
        .ok_or(Error::Validity(req.validity))?;
    let not_after = to_offset(not_after_sys, req.validity)?;

    let issue = |what: &'static str| move |source| Error::Issue { what, source };

    // The CA key lives only in this stack frame; `KeyPair` is dropped at the end of the function.
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue("CA"))?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name(&format!("isolated-runner job {} CA", req.job_id));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(issue("CA"))?;
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca_params, &ca_key);

    let leaf_params = |cn: String, eku: ExtendedKeyUsagePurpose| {
        let mut p = CertificateParams::default();
        p.distinguished_name = name(&cn);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![eku];
        p.not_before = not_before;
        p.not_after = not_after;
        p.use_authority_key_identifier_extension = true;
        p
    };

    let server_key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue("server"))?;
    let mut server_params = leaf_params(
        format!("isolated-runner job {} docker", req.job_id),
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    for dns in &req.server_dns {
        let name = dns.as_str().try_into().map_err(|e| Error::Issue {
            what: "server",
            source: e,
        })?;
        server_params.subject_alt_names.push(SanType::DnsName(name));
    }
    for ip in &req.server_ips {
        server_params
            .subject_alt_names
            .push(SanType::IpAddress(*ip));
    }
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(issue("server"))?;

    let client_key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue("client"))?;
    let client_params = leaf_params(
        format!("isolated-runner job {} client", req.job_id),
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let client_cert = client_params
        .signed_by(&client_key, &issuer)
        .map_err(issue("client"))?;

    Ok(JobPki {
        server: CertBundle {
            ca_pem: ca_pem.clone(),
            cert_pem: server_cert.pem(),
            key_pem: PrivateKeyPem(Zeroizing::new(server_key.serialize_pem())),
        },
        client: CertBundle {
            ca_pem,
            cert_pem: client_cert.pem(),
            key_pem: PrivateKeyPem(Zeroizing::new(client_key.serialize_pem())),
        },
        not_after: not_after_sys,
    })
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn to_offset(t: SystemTime, validity: Duration) -> Result<time::OffsetDateTime, Error> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| Error::Validity(validity))?
        .as_secs();
    let secs = i64::try_from(secs).map_err(|_| Error::Validity(validity))?;
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|_| Error::Validity(validity))
}

/// Parses every certificate in a PEM text.
pub fn parse_certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, Error> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            what,
            detail: "no certificate in the text".to_string(),
        });
    }
    Ok(certs)
}

/// The rustls client configuration for the runner's own connection to a job's sidecar: the job
/// CA is the only trusted root (no system roots: nothing but this job's daemon may answer), and
/// the client certificate is presented.
pub fn client_config(client: &CertBundle) -> Result<Arc<rustls::ClientConfig>, Error> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in parse_certs(&client.ca_pem, "CA certificate")? {
        roots.add(ca)?;
    }
    let chain = parse_certs(&client.cert_pem, "client certificate")?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(client.key_pem.expose().as_bytes())
        .map_err(|e| Error::Pem {
            what: "client key",
            detail: e.to_string(),
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(ca_pem: &str) -> Arc<rustls::RootCertStore> {
        let mut r = rustls::RootCertStore::empty();
        for c in parse_certs(ca_pem, "ca").unwrap() {
            r.add(c).unwrap();
        }
        Arc::new(r)
    }

    fn pki(validity: Duration) -> JobPki {
        let req = PkiRequest {
            validity,
            ..PkiRequest::for_sidecar(42, "10.213.0.2".parse().unwrap(), Duration::ZERO)
        };
        issue_job_pki(&req).unwrap()
    }

    fn verify_server(
        p: &JobPki,
        ca_pem: &str,
        name: &str,
        at: SystemTime,
    ) -> Result<(), rustls::Error> {
        let v =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca_pem), provider())
                .build()
                .unwrap();
        let leaf = parse_certs(&p.server.cert_pem, "server").unwrap().remove(0);
        let name = ServerName::try_from(name.to_string()).unwrap();
        v.verify_server_cert(
            &leaf,
            &[],
            &name,
            &[],
            UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap()),
        )
        .map(|_| ())
    }

    #[test]
    fn server_chain_verifies_for_every_san() {
        let p = pki(Duration::from_secs(3600));
        let now = SystemTime::now();
        for n in ["docker", "localhost", "10.213.0.2", "127.0.0.1"] {
            verify_server(&p, &p.server.ca_pem, n, now).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
        // A name that is not a SAN is refused.
        assert!(verify_server(&p, &p.server.ca_pem, "other", now).is_err());
        assert!(verify_server(&p, &p.server.ca_pem, "10.213.0.3", now).is_err());
    }

    #[test]
    fn another_jobs_ca_is_rejected() {
        let a = pki(Duration::from_secs(3600));
        let b = pki(Duration::from_secs(3600));
        assert!(verify_server(&a, &b.server.ca_pem, "docker", SystemTime::now()).is_err());
        // And B's client certificate is refused by a verifier holding A's CA.
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots(&a.client.ca_pem),
            provider(),
        )
        .build()
        .unwrap();
        let now = UnixTime::now();
        let b_leaf = parse_certs(&b.client.cert_pem, "c").unwrap().remove(0);
        assert!(v.verify_client_cert(&b_leaf, &[], now).is_err());
        let a_leaf = parse_certs(&a.client.cert_pem, "c").unwrap().remove(0);
        v.verify_client_cert(&a_leaf, &[], now).unwrap();
    }

    #[test]
    fn expiry_is_as_configured() {
        let validity = Duration::from_secs(2 * 3600);
        let p = pki(validity);
        let now = SystemTime::now();
        verify_server(
            &p,
            &p.server.ca_pem,
            "docker",
            now + validity - Duration::from_secs(60),
        )
        .unwrap();
        assert!(
            verify_server(
                &p,
                &p.server.ca_pem,
                "docker",
                now + validity + Duration::from_secs(60)
            )
            .is_err()
        );
        let d = p.not_after.duration_since(now).unwrap();
        assert!(d <= validity && d + Duration::from_secs(5) >= validity);
    }

    #[test]
    fn for_sidecar_adds_margin_and_sans() {
        let r = PkiRequest::for_sidecar(7, "10.0.0.2".parse().unwrap(), Duration::from_secs(3600));
        assert_eq!(r.validity, Duration::from_secs(3600) + VALIDITY_MARGIN);
        assert!(r.server_dns.contains(&"docker".to_string()));
        assert!(r.server_dns.contains(&"localhost".to_string()));
        assert!(r.server_ips.contains(&"10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn keys_are_redacted_and_p256() {
        let p = pki(Duration::from_secs(60));
        assert_eq!(format!("{:?}", p.client.key_pem), "[PRIVATE KEY]");
        assert!(!format!("{p:?}").contains("PRIVATE KEY-----"));
        let k = KeyPair::from_pem(p.server.key_pem.expose()).unwrap();
        assert_eq!(k.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn client_config_builds() {
        let p = pki(Duration::from_secs(60));
        let c = client_config(&p.client).unwrap();
        assert!(c.client_auth_cert_resolver.has_certs());
    }
}
