export DB_PASSWORD="$DB_PASSWORD"
export TOKEN="${GITHUB_TOKEN}"
export PASSWORD=$(cat /run/secrets/pw)
read -r -s -p "Password: " password
echo "$password" | docker login --password-stdin
unset DB_PASSWORD
curl -H "Authorization: Bearer $TOKEN" https://api.test
mysql --password="$MYSQL_PWD" db
export API_KEY="${API_KEY:?set API_KEY}"
