s3 = boto3.client("s3", aws_secret_access_key="XAk818JEzUxdJmr7lSYaAHcKlOiKTC4x1gC7duRx")
