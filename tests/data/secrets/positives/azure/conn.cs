var conn = "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=kLi1/SC7ry7mfsg5XcZBYCv5bYtaAqArcZLJ3W+UV/VERipnA7+TNPlhchLovzkXk38G+r57pTGKmqNdz327Cw==;EndpointSuffix=core.windows.net";
