import ssl

EC_KEY = """-----BEGIN EC PRIVATE KEY-----
Gy3dn2bxGm7QyD8RUeU5TxaDgLNVZIVcSIpaYoLm5eChqWBT5LNVysCksxkvPfzf
8CecY041Bn4LdqFedr52W3rypbouhfNEVN1rivM5jBxpC/lL3cE0A7Gq5x9cgFOr
8vfaF261fnipa8HM3xKToT8WH7RlUjBawwkoWYr6SimXVobo9bXOx0vJPFolpriZ
Ll/ly3MJ9DPQmKVygSUn+N2I==
-----END EC PRIVATE KEY-----"""
