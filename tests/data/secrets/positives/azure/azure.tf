storage_account_key = "PqLnNv9ngJCgx/5hGPcMZ+G0cVoTQvNqgm5/vleG+DjX0ceH1/LS7j7/2WbTZ0O+q+V9uRbs0jkWndpe03f/2A=="
