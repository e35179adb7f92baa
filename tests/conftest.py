pytest_plugins = ["tests.pg_fixtures", "tests.kafka_fixtures", "tests.salesforce_fixtures", "tests.stack_fixtures"]
