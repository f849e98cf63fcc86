URL = "https://acme.blob.core.windows.net/c/f.txt?sv=2022-11-02&ss=b&sp=r&se=2027-01-01&sig=4AWJW5EHfim2s2oB9253Ija144NTtm23UEUC2WaadPs%3D"
