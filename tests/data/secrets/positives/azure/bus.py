CONN = "Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=7bo+N6TlNp0Ru5s9sE1SoCzQVOtbqaVmMCdlXPXoKHw="
