variable "db_password" {
  type      = string
  sensitive = true
  default   = "jQdz1lVu6yG1"
}
