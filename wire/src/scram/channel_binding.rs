//! `tls-server-end-point` channel binding data (RFC 5929 §4).
//!
//! The data is a hash of the server's DER certificate, using the hash of the
//! certificate's signature algorithm, or SHA-256 when that is MD5 or SHA-1.
//! Only the signature algorithm OID is needed, so instead of a full X.509
//! parser this walks just far enough into the DER, checking every length.

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// DER tag of a SEQUENCE.
const SEQUENCE: u8 = 0x30;
/// DER tag of an OBJECT IDENTIFIER.
const OID: u8 = 0x06;

/// The hash to use for a signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// Signature algorithm OIDs (DER content bytes) and the hash each implies.
const ALGORITHMS: &[(&[u8], Hash)] = &[
    // 1.2.840.113549.1.1.{4,5}: md5/sha1WithRSAEncryption → SHA-256 by RFC 5929.
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04],
        Hash::Sha256,
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05],
        Hash::Sha256,
    ),
    // 1.2.840.113549.1.1.{11,12,13,14}: sha256/384/512/224WithRSAEncryption.
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b],
        Hash::Sha256,
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        Hash::Sha384,
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        Hash::Sha512,
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0e],
        Hash::Sha224,
    ),
    // 1.2.840.10045.4.1: ecdsa-with-SHA1 → SHA-256.
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01], Hash::Sha256),
    // 1.2.840.10045.4.3.{1,2,3,4}: ecdsa-with-SHA224/256/384/512.
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x01],
        Hash::Sha224,
    ),
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
        Hash::Sha256,
    ),
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
        Hash::Sha384,
    ),
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
        Hash::Sha512,
    ),
    // 1.2.840.10040.4.3: dsa-with-sha1 → SHA-256.
    (&[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03], Hash::Sha256),
    // 2.16.840.1.101.3.4.3.{1,2}: dsa-with-sha224/256.
    (
        &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x01],
        Hash::Sha224,
    ),
    (
        &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x02],
        Hash::Sha256,
    ),
];

/// Computes tls-server-end-point data for the DER certificate `cert_der`.
///
/// Returns `None` for malformed DER and for signature algorithms without a
/// single associated hash: RSASSA-PSS (the hash is in its parameters) and
/// Ed25519/Ed448. For those Postgres and libpq cannot compute the binding
/// either (OpenSSL finds no digest), and libpq aborts the connection if
/// offered -PLUS it cannot bind to; so `None` tells the caller not to
/// advertise SCRAM-SHA-256-PLUS with such a certificate.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let hash = signature_hash(cert_der)?;
    Some(match hash {
        Hash::Sha224 => Sha224::digest(cert_der).to_vec(),
        Hash::Sha256 => Sha256::digest(cert_der).to_vec(),
        Hash::Sha384 => Sha384::digest(cert_der).to_vec(),
        Hash::Sha512 => Sha512::digest(cert_der).to_vec(),
    })
}

/// Finds the hash implied by the certificate's outer signatureAlgorithm.
///
/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm
/// AlgorithmIdentifier, signatureValue BIT STRING }` and
/// `AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL }`.
fn signature_hash(cert_der: &[u8]) -> Option<Hash> {
    let (tag, certificate, _) = tlv(cert_der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _tbs, rest) = tlv(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, algorithm_identifier, _) = tlv(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, oid, _) = tlv(algorithm_identifier)?;
    if tag != OID {
        return None;
    }
    ALGORITHMS
        .iter()
        .find(|(known, _)| *known == oid)
        .map(|(_, hash)| *hash)
}

/// Splits one DER TLV off `input`: `(tag, contents, rest)`.
///
/// Only single-byte tags and definite lengths (short form, or long form up
/// to 4 bytes) occur in certificates; anything else is refused.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b))
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal certificate-shaped DER: SEQUENCE { SEQUENCE {tbs},
    /// SEQUENCE { OID }, BIT STRING }.
    fn cert(oid: &[u8], tbs_len: usize) -> Vec<u8> {
        let mut tbs = vec![SEQUENCE];
        push_len(&mut tbs, tbs_len);
        tbs.extend(std::iter::repeat_n(0x02, tbs_len));
        let mut alg = vec![SEQUENCE, (oid.len() + 4) as u8, OID, oid.len() as u8];
        alg.extend_from_slice(oid);
        alg.extend_from_slice(&[0x05, 0x00]);
        let sig = [0x03, 0x02, 0x00, 0xff];
        let inner = [tbs, alg, sig.to_vec()].concat();
        let mut out = vec![SEQUENCE];
        push_len(&mut out, inner.len());
        out.extend(inner);
        out
    }

    fn push_len(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
        }
    }

    #[test]
    fn picks_the_hash_of_the_signature_algorithm() {
        let sha256_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
        let sha384_ecdsa = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
        let sha512_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
        let sha1_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
        for (oid, len) in [
            (&sha256_rsa[..], 32),
            (&sha384_ecdsa[..], 48),
            (&sha512_rsa[..], 64),
            (&sha1_rsa[..], 32),
        ] {
            let der = cert(oid, 300);
            let got = tls_server_end_point(&der).unwrap();
            assert_eq!(got.len(), len);
        }
        let der = cert(&sha256_rsa, 10);
        assert_eq!(
            tls_server_end_point(&der).unwrap(),
            Sha256::digest(&der).to_vec()
        );
    }

    #[test]
    fn refuses_unknown_algorithms_and_malformed_der() {
        let ed25519 = [0x2b, 0x65, 0x70];
        assert_eq!(tls_server_end_point(&cert(&ed25519, 10)), None);
        let good = cert(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02], 200);
        for cut in 0..good.len() {
            assert_eq!(tls_server_end_point(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(
            tls_server_end_point(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(tls_server_end_point(&[0x30, 0x80]), None);
        assert_eq!(tls_server_end_point(&[]), None);
    }
}
