variable "db_password" {
  type      = string
  sensitive = true
  default   = "bAkkl00RVpAj"
}
