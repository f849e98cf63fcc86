    String cs = "Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=n1bQTH9MyjZUBIp2XK7PJ/TtG4CiW+9RE7wUgqlN0vE=";
