export DB_PASSWORD="2tSUwT3Qps+"
export SMTP_PASS=552BftWDytJsT1+
mysql -u root --password OURnLh7CDdmL_ shop < dump.sql
