//! `proctor token`: a token signed by the embedded dev issuer.

use std::process::ExitCode;

use anyhow::Context;
use proctor_gateway_core::identity::{DevIssuer, DevIssuerConfig};

use crate::cli::TokenArgs;
use crate::config::Config;

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let (data_dir, dev) = match (&args.config, &args.data_dir) {
        (_, Some(dir)) => (dir.clone(), DevIssuerConfig::default()),
        (Some(path), None) => {
            let config = Config::load(path)?;
            let dev = config.identity.dev_issuer.clone().filter(|d| d.enabled).with_context(|| {
                format!("the dev issuer is off in {}: add an [identity.dev_issuer] section", path.display())
            })?;
            (config.data_dir, dev)
        }
        (None, None) => anyhow::bail!("say whose dev issuer signs: --config FILE or --data-dir DIR"),
    };
    let issuer = DevIssuer::open_or_create(&data_dir, &dev)?;
    let groups: Vec<String> = args.groups.iter().map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect();
    let token = issuer.sign(&args.sub, &groups, args.ttl)?;
    if args.json {
        let expires = proctor_schemas::Timestamp(
            proctor_schemas::Timestamp::now().0.saturating_add(args.ttl.as_nanos().min(i64::MAX as u128) as i64),
        );
        let line = serde_json::json!({
            "token": token,
            "sub": args.sub,
            "groups": groups,
            "issuer": issuer.issuer(),
            "expires_at": expires.to_rfc3339(),
        });
        println!("{line}");
    } else {
        println!("{token}");
    }
    Ok(ExitCode::SUCCESS)
}
