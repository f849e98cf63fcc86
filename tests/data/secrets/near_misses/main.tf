  password = var.db_password
  master_password = random_password.db.result
  password = data.aws_secretsmanager_secret_version.db.secret_string
  token = ""
  admin_password = local.admin_password
  secret_name = "prod-db"
  sensitive = true
variable "db_password" {
  type = string
}
