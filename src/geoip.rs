//! Countries from a MaxMind-format database (`geoip_database`: GeoLite2-Country, DB-IP
//! lite, or the public-domain geo-whois-asn-country), read with the `maxminddb` crate.
//! When it is set, every decision listed gets its country from it (the network address
//! of a range); else the LAPI alert's country, as before.

use crate::decision::Target;
use anyhow::Context;
use maxminddb::{PathElement, Reader};
use std::net::IpAddr;
use std::path::Path;

pub struct GeoIp {
    reader: Reader<Vec<u8>>,
}

impl GeoIp {
    /// Opens and checks `path` (a readable MaxMind DB).
    pub fn open(path: &Path) -> anyhow::Result<GeoIp> {
        let reader = Reader::open_readfile(path).with_context(|| {
            format!(
                "geoip_database {}: not a readable MaxMind DB (.mmdb) file",
                path.display()
            )
        })?;
        Ok(GeoIp { reader })
    }

    /// The database's type, e.g. `GeoLite2-Country` (for the logs).
    pub fn kind(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// The ISO 3166 code of `ip`: `country.iso_code` (GeoLite2, DB-IP), else
    /// `country_code` (geo-whois-asn-country); `None` when the database has no entry.
    pub fn country(&self, ip: IpAddr) -> Option<String> {
        let found = self.reader.lookup(ip).ok()?;
        let paths: [&[PathElement]; 2] = [
            &[PathElement::Key("country"), PathElement::Key("iso_code")],
            &[PathElement::Key("country_code")],
        ];
        paths
            .iter()
            .find_map(|p| found.decode_path::<String>(p).ok().flatten())
            .filter(|c| !c.is_empty())
    }

    /// The country of a decision's value (an IP, or the network address of a range).
    pub fn country_of(&self, value: &str) -> Option<String> {
        let target = Target::parse(value)?;
        let ip: IpAddr = target.to_string().split('/').next()?.parse().ok()?;
        self.country(ip)
    }
}
