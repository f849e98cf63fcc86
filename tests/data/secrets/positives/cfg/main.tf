  admin_password = "hJlKsKtZ+"
  master_password = "0kx9Mj10Q21!"
