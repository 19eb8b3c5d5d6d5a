use std::process::ExitCode;

use anyhow::Context;
use proctor_recorder::keys::{fingerprint, load_public_key, public_key_pem};
use proctor_recorder::layout::Layout;
use serde_json::json;

use crate::cli::DataDirArgs;
use crate::config::Config;

pub fn show(location: DataDirArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let data_dir = match (location.data_dir, location.config) {
        (Some(dir), _) => dir,
        (None, Some(config)) => Config::load(&config)?.data_dir,
        (None, None) => anyhow::bail!("pass --data-dir or --config"),
    };
    let keys_dir = Layout::new(&data_dir).keys_dir();
    let key = load_public_key(&keys_dir).with_context(|| {
        format!(
            "no signing key in {}: it is created when the recorder first starts (proctor up or proctor generate)",
            data_dir.display()
        )
    })?;
    let pem = public_key_pem(&key);
    if as_json {
        println!(
            "{}",
            json!({
                "algorithm": "ed25519",
                "fingerprint": fingerprint(&key),
                "public_key_hex": hex_encode(key.as_bytes()),
                "public_key_pem": pem,
                "file": keys_dir.join(proctor_recorder::keys::PUBLIC_KEY_FILE),
            })
        );
    } else {
        println!("algorithm:   ed25519");
        println!("fingerprint: {}", fingerprint(&key));
        println!("public key:  {}", hex_encode(key.as_bytes()));
        println!("file:        {}", keys_dir.join(proctor_recorder::keys::PUBLIC_KEY_FILE).display());
        print!("{pem}");
    }
    Ok(ExitCode::SUCCESS)
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
