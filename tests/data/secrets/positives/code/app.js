const clientSecret = "wTYXw11LMVaYURxHcluadTIO4wRBHWvF";
