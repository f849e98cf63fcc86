curl -H 'Authorization: Bearer dvy8YLSDmrkP8cPPQ11ZFsLa8FSDMBUuylgSh8Z3' https://api.test
