//! Network configuration: `--net tap=NAME[,mac=MAC]`, or a Firecracker `network-interfaces`
//! entry.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// An existing TAP device (gureum attaches to it; as root it is created if missing).
    pub tap: String,
    /// The guest's MAC; a locally administered one is made up if not given.
    pub mac: Option<[u8; 6]>,
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|h| {
            if h.len() == 2 {
                u8::from_str_radix(h, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()
        .ok_or_else(|| format!("bad MAC address {s:?} (expected aa:bb:cc:dd:ee:ff)"))?;
    <[u8; 6]>::try_from(bytes).map_err(|_| format!("bad MAC address {s:?} (expected six bytes)"))
}

/// `aa:bb:cc:dd:ee:ff`, as [`parse_mac`] reads it.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

impl FromStr for NetConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (mut tap, mut mac) = (None, None);
        for opt in s.split(',') {
            match opt.split_once('=') {
                Some(("tap", name)) if !name.is_empty() => tap = Some(name.to_string()),
                Some(("mac", m)) => mac = Some(parse_mac(m)?),
                _ => {
                    return Err(format!(
                        "unknown network option {opt:?} (expected tap=NAME or mac=MAC)"
                    ));
                }
            }
        }
        Ok(Self {
            tap: tap.ok_or("a network interface needs tap=NAME")?,
            mac,
        })
    }
}

/// A Firecracker `network-interfaces` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    pub guest_mac: Option<String>,
}

impl TryFrom<NetworkInterface> for NetConfig {
    type Error = String;

    fn try_from(n: NetworkInterface) -> Result<Self, String> {
        let mac = n.guest_mac.as_deref().map(parse_mac).transpose()?;
        Ok(Self {
            tap: n.host_dev_name,
            mac,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_flag() {
        let n: NetConfig = "tap=gtap0,mac=02:00:00:aa:bb:0c".parse().unwrap();
        assert_eq!(
            n,
            NetConfig {
                tap: "gtap0".into(),
                mac: Some([2, 0, 0, 0xaa, 0xbb, 0x0c])
            }
        );
        assert_eq!("tap=t".parse::<NetConfig>().unwrap().mac, None);
        assert!(
            "mac=02:00:00:00:00:01"
                .parse::<NetConfig>()
                .unwrap_err()
                .contains("tap=NAME")
        );
        assert!(
            "tap=t,mac=02:00"
                .parse::<NetConfig>()
                .unwrap_err()
                .contains("six bytes")
        );
        assert!(
            "tap=t,mac=zz:00:00:00:00:00"
                .parse::<NetConfig>()
                .unwrap_err()
                .contains("bad MAC")
        );
        assert!(
            "tap=t,queues=2"
                .parse::<NetConfig>()
                .unwrap_err()
                .contains("\"queues=2\"")
        );
    }
}
