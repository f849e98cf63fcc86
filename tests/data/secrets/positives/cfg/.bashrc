export GH_TOKEN=P4vmEIA3Ium+
